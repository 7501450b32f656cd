//! Found by an attack: the services' roles could create temporary tables (the code said they could
//! not), and any login role on the server could connect to the platform's database. The database
//! admits only the roles provisioned in it, and nobody creates temporary tables there.

use std::str::FromStr;

use pac_platform::config::DEVELOPMENT_ROLE_PASSWORD;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::common::Processes;

fn as_role(processes: &Processes, role: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&processes.db.admin_url).unwrap().username(role).password(DEVELOPMENT_ROLE_PASSWORD)
}

fn sqlstate(error: &sqlx::Error) -> String {
    error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned()).unwrap_or_else(|| format!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_platforms_roles_connect_and_none_creates_temporary_tables() {
    let processes = Processes::start().await;
    for role in ["pac_records", "pac_scheduling", "pac_referrals", "pac_gateway"] {
        let mut connection = as_role(&processes, role).connect().await.unwrap_or_else(|e| panic!("{role} connects: {e}"));
        let refused = sqlx::raw_sql("CREATE TEMPORARY TABLE scratch (n int)").execute(&mut connection).await.unwrap_err();
        assert_eq!(sqlstate(&refused), "42501", "{role} may not create a temporary table");
    }
    // A login role of another application on the same server.
    let admin = processes.db.admin_pool().await;
    let outsider = format!("pac_test_outsider_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE {outsider} LOGIN PASSWORD '{DEVELOPMENT_ROLE_PASSWORD}'; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let refused = as_role(&processes, &outsider).connect().await.map(|_| ()).unwrap_err();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {outsider}"))).execute(&admin).await.unwrap();
    assert_eq!(sqlstate(&refused), "42501", "another role may not connect to the platform's database");
}
