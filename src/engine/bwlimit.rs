//! The bandwidth cap: a rate (`200MiB/s`), `off`, or a weekly timetable of rates in local
//! time (`Mon-Fri 08:00,50MiB/s 19:00,off`), and the pacer that admits chunks at the rate in
//! force.
//!
//! The cap works on admission, not inside a request: a chunk starts only when the bytes
//! already started are paid for at the rate (a token bucket that may run into debt by one
//! chunk, and keeps at most a second of credit). So a low cap means fewer chunks in flight,
//! each moving at the link's own speed — no chunk is slowed down, so none looks stalled, and
//! the concurrency controller, which sees the limit unused, neither raises it nor mistakes
//! the cap for a throttle. Over seconds the bytes started follow the rate; within one chunk's
//! time they come in bursts of a chunk.
//!
//! Timetable: entries `HH:MM,RATE` apply from that time of day on; a day or a range of days
//! (`Mon`, `Sat-Sun`, `Fri-Mon`) before entries limits them to those days. The rate in force
//! is that of the latest entry at or before now in the week, wrapping around (Friday's
//! `19:00,off` lasts until Monday's `08:00` when nothing else is set). Times are local wall
//! clock: on the day clocks go forward, an entry in the skipped hour applies from the first
//! minute after it; when they go back, the repeated hour has the rate of its wall-clock time
//! both times.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Minutes in a week.
const WEEK: u32 = 7 * 24 * 60;
const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A bandwidth cap as the operator wrote it, and what it says for each minute of the week.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BwLimit {
    text: String,
    /// (minute of the week from Monday 00:00, bytes per second or none), in order.
    changes: Vec<(u32, Option<u64>)>,
}

impl BwLimit {
    /// The name it is recorded under in the state file.
    pub const SETTING: &'static str = "bwlimit";

    /// No cap.
    pub fn off() -> Self {
        Self {
            text: "off".into(),
            changes: vec![(0, None)],
        }
    }

    /// Reads a cap as written: a rate, `off`, or a timetable.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let fail = |why: String| {
            Err(format!(
                "bandwidth cap `{text}`: {why}; write a rate (50MiB/s), off, or a timetable \
                 (\"Mon-Fri 08:00,50MiB/s 19:00,off\")"
            ))
        };
        let tokens: Vec<&str> = text.split_whitespace().collect();
        if tokens.is_empty() {
            return fail("nothing given".into());
        }
        if let [only] = tokens[..]
            && !only.contains(',')
        {
            return match parse_rate(only) {
                Ok(rate) => Ok(Self {
                    text: text.into(),
                    changes: vec![(0, rate)],
                }),
                Err(why) => fail(why),
            };
        }
        let mut days: Vec<u32> = (0..7).collect();
        let mut changes: Vec<(u32, Option<u64>)> = Vec::new();
        let mut entries_for_days = true;
        for token in tokens {
            let Some((time, rate)) = token.split_once(',') else {
                match parse_days(token) {
                    Ok(d) => {
                        if !entries_for_days {
                            return fail(format!("`{token}` names days but no times follow"));
                        }
                        days = d;
                        entries_for_days = false;
                        continue;
                    }
                    Err(why) => return fail(why),
                }
            };
            let minute = match parse_time(time) {
                Ok(m) => m,
                Err(why) => return fail(why),
            };
            let rate = match parse_rate(rate) {
                Ok(r) => r,
                Err(why) => return fail(why),
            };
            for day in &days {
                let at = day * 24 * 60 + minute;
                if changes.iter().any(|(m, _)| *m == at) {
                    return fail(format!("two rates for {} {time}", DAYS[*day as usize]));
                }
                changes.push((at, rate));
            }
            entries_for_days = true;
        }
        if !entries_for_days {
            return fail("the last days named have no times".into());
        }
        changes.sort_unstable_by_key(|(m, _)| *m);
        Ok(Self {
            text: text.into(),
            changes,
        })
    }

    /// The bytes per second in force at `minute` of the week (0 = Monday 00:00), none for no
    /// cap.
    pub fn rate_at(&self, minute: u32) -> Option<u64> {
        let minute = minute % WEEK;
        self.changes
            .iter()
            .rev()
            .find(|(m, _)| *m <= minute)
            .or(self.changes.last())
            .and_then(|(_, rate)| *rate)
    }

    /// The rate in force now, in local time.
    pub fn rate_now(&self) -> Option<u64> {
        if let [(_, rate)] = self.changes[..] {
            return rate;
        }
        self.rate_at(local_minute_of_week())
    }

    /// True when it never caps anything.
    pub fn is_off(&self) -> bool {
        self.changes.iter().all(|(_, rate)| rate.is_none())
    }

    /// True when the rate changes with the time of the week.
    pub fn is_timetable(&self) -> bool {
        self.changes.len() > 1
    }

    /// As written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for BwLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for BwLimit {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<BwLimit> for String {
    fn from(limit: BwLimit) -> String {
        limit.text
    }
}

impl std::str::FromStr for BwLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

/// `50MiB/s`, `50MiB`, `512KiB/s`, or `off`: bytes per second, none for no cap.
fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let size = text.strip_suffix("/s").unwrap_or(text);
    let bytes = crate::size::parse_size(size)?;
    if bytes < 1024 {
        return Err(format!(
            "`{text}` is below 1KiB/s; to stop copying, pause the jobs"
        ));
    }
    Ok(Some(bytes))
}

/// `HH:MM` → minute of the day.
fn parse_time(text: &str) -> Result<u32, String> {
    let digits = text.len() == 5
        && text.bytes().enumerate().all(|(i, b)| {
            if i == 2 {
                b == b':'
            } else {
                b.is_ascii_digit()
            }
        });
    let parsed = digits
        .then(|| {
            Some((
                text[..2].parse::<u32>().ok()?,
                text[3..].parse::<u32>().ok()?,
            ))
        })
        .flatten()
        .filter(|(h, m)| *h < 24 && *m < 60);
    parsed
        .map(|(h, m)| h * 60 + m)
        .ok_or_else(|| format!("`{text}` is not a time of day (HH:MM, 00:00 to 23:59)"))
}

/// `Mon`, or `Mon-Fri` (wrapping: `Fri-Mon`) → the days, Monday = 0.
fn parse_days(text: &str) -> Result<Vec<u32>, String> {
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| d.eq_ignore_ascii_case(name))
            .map(|i| i as u32)
            .ok_or_else(|| {
                format!("`{name}` is neither a day (Mon … Sun) nor an entry (HH:MM,RATE)")
            })
    };
    match text.split_once('-') {
        Some((first, last)) => {
            let (first, last) = (day(first)?, day(last)?);
            let span = (last + 7 - first) % 7;
            Ok((0..=span).map(|i| (first + i) % 7).collect())
        }
        None => Ok(vec![day(text)?]),
    }
}

/// Minutes since Monday 00:00, local wall-clock time (UTC where the system's time zone is
/// unknown).
fn local_minute_of_week() -> u32 {
    let now = jiff::Zoned::now();
    let day = u32::from(now.weekday().to_monday_zero_offset().unsigned_abs());
    let minute = u32::from(now.hour().unsigned_abs()) * 60 + u32::from(now.minute().unsigned_abs());
    day * 24 * 60 + minute
}

/// At most this much unused rate is saved up (an idle second lets the next second burst).
const CREDIT: Duration = Duration::from_secs(1);

/// Admits bytes at a rate: a token bucket that may go into debt by what was last admitted.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: Option<u64>,
    /// Bytes that may start now (negative: owed).
    tokens: f64,
    at: Instant,
    /// True once anything was paced: credit is saved up only between chunks, not before the
    /// first (an engine's start-up is no idle link).
    paced: bool,
}

impl Pacer {
    /// A pacer at `rate` bytes per second (none: everything passes).
    pub fn new(rate: Option<u64>, now: Instant) -> Self {
        Self {
            rate,
            tokens: 0.0,
            at: now,
            paced: false,
        }
    }

    /// The rate it paces at.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Changes the rate from now on; a debt is repaid at the new rate.
    pub fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        self.refill(now);
        self.rate = rate;
        if rate.is_none() {
            self.tokens = 0.0;
            self.paced = false;
        }
        self.refill(now);
    }

    fn refill(&mut self, now: Instant) {
        if let Some(rate) = self.rate {
            let earned = now.duration_since(self.at).as_secs_f64() * rate as f64;
            let most = if self.paced {
                CREDIT.as_secs_f64() * rate as f64
            } else {
                0.0
            };
            self.tokens = (self.tokens + earned).min(most);
        }
        self.at = now;
    }

    /// When the next bytes may start: none if now.
    pub fn wait_until(&mut self, now: Instant) -> Option<Instant> {
        let rate = self.rate? as f64;
        self.refill(now);
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / rate))
    }

    /// Counts `bytes` as started now.
    pub fn take(&mut self, bytes: u64, now: Instant) {
        if self.rate.is_some() {
            self.refill(now);
            self.tokens -= bytes as f64;
            self.paced = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn at(day: u32, hour: u32, minute: u32) -> u32 {
        day * 24 * 60 + hour * 60 + minute
    }

    #[test]
    fn a_rate_or_off() {
        let cap = BwLimit::parse("200MiB/s").expect("rate");
        assert_eq!(cap.rate_at(at(3, 12, 0)), Some(200 * MIB));
        assert!(!cap.is_timetable());
        assert_eq!(
            BwLimit::parse("512K").expect("rate").rate_at(0),
            Some(512 << 10)
        );
        let off = BwLimit::parse("off").expect("off");
        assert!(off.is_off());
        assert_eq!(off.rate_at(0), None);
        assert_eq!(off, BwLimit::off());
    }

    #[test]
    fn a_timetable_applies_its_latest_entry_and_wraps_around_the_week() {
        let cap = BwLimit::parse("Mon-Fri 08:00,50MiB/s 19:00,off").expect("timetable");
        assert!(cap.is_timetable());
        assert_eq!(cap.rate_at(at(0, 8, 0)), Some(50 * MIB), "Monday 08:00");
        assert_eq!(
            cap.rate_at(at(2, 18, 59)),
            Some(50 * MIB),
            "Wednesday 18:59"
        );
        assert_eq!(cap.rate_at(at(2, 19, 0)), None, "Wednesday 19:00");
        assert_eq!(cap.rate_at(at(3, 7, 59)), None, "Thursday before 08:00");
        assert_eq!(
            cap.rate_at(at(5, 12, 0)),
            None,
            "Saturday: Friday's 19:00 holds"
        );
        assert_eq!(
            cap.rate_at(at(0, 7, 0)),
            None,
            "Monday early: wraps to Friday"
        );
        let daily = BwLimit::parse("08:00,10M 23:00,1M").expect("daily");
        assert_eq!(
            daily.rate_at(at(6, 3, 0)),
            Some(MIB),
            "before 08:00: yesterday 23:00"
        );
        assert_eq!(daily.rate_at(at(6, 9, 0)), Some(10 * MIB));
        let weekend = BwLimit::parse("Mon-Fri 09:00,5M Sat-Sun 00:00,off").expect("weekend");
        assert_eq!(weekend.rate_at(at(6, 23, 59)), None);
        assert_eq!(
            weekend.rate_at(at(0, 8, 0)),
            None,
            "Sunday's off until Monday 09:00"
        );
        assert_eq!(weekend.rate_at(at(0, 9, 0)), Some(5 * MIB));
        let wrapping = BwLimit::parse("Fri-Mon 00:00,1M").expect("wrapping range");
        assert_eq!(wrapping.changes.len(), 4, "Fri, Sat, Sun, Mon");
    }

    #[test]
    fn mistakes_are_named() {
        for (text, names) in [
            ("", "nothing given"),
            ("fast", "not a size"),
            ("25:00,1M", "`25:00` is not a time"),
            ("8:00,1M", "`8:00` is not a time"),
            ("+8:00,1M", "`+8:00` is not a time"),
            ("Mon-Fry 08:00,1M", "`Fry` is neither a day"),
            ("Mon Tue 08:00,1M", "`Tue` names days but no times follow"),
            ("08:00,1M Sat", "the last days named have no times"),
            ("08:00,1M 08:00,2M", "two rates for Mon 08:00"),
            ("08:00,10", "below 1KiB/s"),
            ("08:00,1Q", "unknown unit"),
        ] {
            let err = BwLimit::parse(text).expect_err(text);
            assert!(err.contains(names), "{text}: {err}");
            assert!(err.starts_with("bandwidth cap"), "{err}");
        }
    }

    #[test]
    fn it_travels_as_written() {
        let cap = BwLimit::parse("Mon-Fri 08:00,50MiB/s 19:00,off").expect("timetable");
        let json = serde_json::to_string(&cap).expect("json");
        assert_eq!(json, "\"Mon-Fri 08:00,50MiB/s 19:00,off\"");
        assert_eq!(serde_json::from_str::<BwLimit>(&json).expect("back"), cap);
        assert!(serde_json::from_str::<BwLimit>("\"25:00,1M\"").is_err());
    }

    proptest! {
        /// Every entry holds from its minute until the next entry's, and the week wraps.
        #[test]
        fn each_entry_holds_until_the_next(
            entries in proptest::collection::btree_map(0u32..1440, 1u64..1000, 1..6),
            day in 0u32..7,
        ) {
            let text: Vec<String> = entries
                .iter()
                .map(|(m, r)| format!("{:02}:{:02},{r}M", m / 60, m % 60))
                .collect();
            let cap = BwLimit::parse(&text.join(" ")).expect("valid");
            let list: Vec<(u32, u64)> = entries.into_iter().collect();
            for (i, (minute, rate)) in list.iter().enumerate() {
                let until = list.get(i + 1).map_or(1440, |(m, _)| *m);
                for m in [*minute, (minute + until) / 2, until - 1] {
                    prop_assert_eq!(cap.rate_at(day * 1440 + m), Some(rate * MIB));
                }
            }
            let (_, last) = list[list.len() - 1];
            let first = list[0].0;
            if first > 0 {
                prop_assert_eq!(cap.rate_at(day * 1440), Some(last * MIB), "before the first: yesterday's last");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_admits_at_the_rate_over_time() {
        let mut pacer = Pacer::new(Some(20 * MIB), Instant::now());
        let start = Instant::now();
        let mut started = 0u64;
        // Chunks of 16 MiB as fast as the pacer lets them start, for ten seconds.
        while start.elapsed() < Duration::from_secs(10) {
            match pacer.wait_until(Instant::now()) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => {
                    pacer.take(16 * MIB, Instant::now());
                    started += 16 * MIB;
                }
            }
        }
        let rate = started as f64 / 10.0 / MIB as f64;
        assert!((19.0..=21.7).contains(&rate), "{rate:.1} MiB/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_rate_applies_to_the_debt_and_off_lets_everything_pass() {
        let mut pacer = Pacer::new(Some(MIB), Instant::now());
        pacer.take(16 * MIB, Instant::now());
        let wait = pacer.wait_until(Instant::now()).expect("in debt");
        assert_eq!(wait.duration_since(Instant::now()), Duration::from_secs(16));
        pacer.set_rate(Some(16 * MIB), Instant::now());
        let wait = pacer.wait_until(Instant::now()).expect("in debt");
        assert_eq!(wait.duration_since(Instant::now()), Duration::from_secs(1));
        pacer.set_rate(None, Instant::now());
        assert_eq!(pacer.wait_until(Instant::now()), None);
        // Before the first chunk nothing is saved up; idle time between chunks saves up at
        // most a second of the rate.
        pacer.set_rate(Some(MIB), Instant::now());
        tokio::time::advance(Duration::from_secs(60)).await;
        pacer.take(MIB, Instant::now());
        let wait = pacer.wait_until(Instant::now()).expect("in debt");
        assert_eq!(wait.duration_since(Instant::now()), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(60)).await;
        pacer.take(3 * MIB, Instant::now());
        let wait = pacer.wait_until(Instant::now()).expect("in debt");
        assert_eq!(wait.duration_since(Instant::now()), Duration::from_secs(2));
    }
}
