//! The PostgreSQL cluster `scripts/test.sh` starts once per run: each test makes its own
//! database in it.

use std::sync::atomic::{AtomicU64, Ordering};

/// The PostgreSQL cluster of this run (its superuser URL).
pub fn cluster() -> String {
    std::env::var("BLOBWAY_TEST_POSTGRES")
        .expect("BLOBWAY_TEST_POSTGRES is not set: run the tests with scripts/test.sh, which starts PostgreSQL")
}

/// `work` with a client of the database at `url`, on a thread and runtime of its own (callers
/// may be inside a runtime).
fn with_client<T: Send + 'static>(
    url: &str,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
            tokio::spawn(connection);
            work(&client).await
        })
    })
    .join()
    .expect("database thread")
}

/// Runs `sql` on the database at `url`.
pub fn execute(url: &str, sql: &str) {
    let sql = sql.to_string();
    with_client(url, async move |client| {
        client.batch_execute(&sql).await.expect("statement");
    });
}

/// Runs `sql` on the cluster's `postgres` database.
pub fn admin(sql: &str) {
    execute(&cluster(), sql);
}

/// The URL of a new, empty database on the cluster.
pub fn fresh_database() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "contract_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    );
    admin(&format!("CREATE DATABASE {name}"));
    let mut url = url::Url::parse(&cluster()).expect("cluster URL");
    url.set_path(&name);
    url.to_string()
}

/// The one number `sql` answers on the database at `url` (a count).
pub fn number(url: &str, sql: &str) -> i64 {
    first_column(url, sql)
}

/// The text of the first column of the one row `sql` returns.
pub fn text(url: &str, sql: &str) -> String {
    first_column(url, sql)
}

fn first_column<T>(url: &str, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a> + Send + 'static,
{
    let sql = sql.to_string();
    with_client(url, async move |client| {
        client
            .query_one(&sql, &[])
            .await
            .expect("query")
            .get::<_, T>(0)
    })
}
