//! What the state benchmarks share: a fresh database on the PostgreSQL cluster they are given.

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
