//! How long one frame of the job-detail screen takes to draw — objects, the chunk heat-map of
//! a 50,000-chunk object and the three graphs — on a 200×60 terminal (ratatui's TestBackend,
//! so the terminal's own speed is left out). Target: ≤ 5 ms per frame. Prints a table;
//! `cargo bench --bench render`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blobway::tui::app::{App, AppOptions};
use blobway::tui::fixtures::snapshot;
use blobway::tui::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

const FRAMES: usize = 300;

fn main() {
    println!("| screen | terminal | chunks | frames | mean | p95 | max |");
    println!("|---|---|---|---|---|---|---|");
    for chunks in [640, 50_000] {
        let (mut app, _) = App::new(AppOptions {
            browse_root: "s3://".into(),
            local_destination: None,
            chunk_size: 64 << 20,
            attached: false,
        });
        app.on_snapshot(Arc::new(snapshot(chunks)));
        for code in [KeyCode::Enter, KeyCode::Down, KeyCode::Down, KeyCode::Tab] {
            app.handle_key(KeyEvent::new(code, KeyModifiers::NONE));
        }
        let mut terminal = Terminal::new(TestBackend::new(200, 60)).expect("terminal");
        let mut times = Vec::with_capacity(FRAMES);
        for i in 0..FRAMES + 20 {
            // A fresh snapshot each frame, as the engine publishes them.
            app.on_snapshot(Arc::new(snapshot(chunks)));
            let start = Instant::now();
            terminal
                .draw(|frame| view::draw(frame, &mut app))
                .expect("draw");
            if i >= 20 {
                times.push(start.elapsed());
            }
        }
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        let p95 = times[times.len() * 95 / 100];
        let max = times[times.len() - 1];
        println!(
            "| job detail | 200×60 | {chunks} | {FRAMES} | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(mean),
            ms(p95),
            ms(max)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
