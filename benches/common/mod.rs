//! What the state benchmarks share: a fresh database on the PostgreSQL cluster they are given,
//! and the one running job their objects belong to.

/// A new database named `name` on the cluster at `cluster` (a superuser URL): its URL.
pub fn fresh_database(cluster: &str, name: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(cluster, tokio_postgres::NoTls)
            .await
            .expect("connect to the cluster");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
    });
    let mut url = url::Url::parse(cluster).expect("cluster URL");
    url.set_path(name);
    url.to_string()
}

/// Job 1, running, planned, from `s3://bench/` to `az://bench/` in 1 MiB chunks.
#[allow(dead_code)]
pub fn bench_job() -> blobway::state::JobRecord {
    blobway::state::JobRecord {
        id: 1,
        source: "s3://bench/".into(),
        destination: "az://bench/".into(),
        options: blobway::state::JobOptions::with_chunk_size(1 << 20),
        state: blobway::state::JobState::Running,
        created_ms: 0,
        updated_ms: 0,
        error: None,
        planned: true,
    }
}
