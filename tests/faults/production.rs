//! Found by an attack: with `PAC_ENVIRONMENT=production` and the development internal key published
//! in the source, the platform started, and a caller context forged with that key read every
//! organisation. Production refuses to start with any published development secret, or with
//! services that accept calls without a caller context.

use pac_platform::config::{DEVELOPMENT_INTERNAL_KEY, DEVELOPMENT_ROLE_PASSWORD};

use crate::common::PAC;

const KEY: &str = "a-secret-of-this-deployment-of-32-characters";

/// `pac serve records` in production with `settings`; its exit status and error output.
fn serve(settings: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(PAC)
        .args(["serve", "records"])
        .env("PAC_ENVIRONMENT", "production")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("PAC_RECORDS_ADDR", "127.0.0.1:0")
        .env_remove("PAC_REQUIRE_CALLER_CONTEXT")
        .envs(settings.iter().copied())
        .output()
        .expect("run pac");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn production_refuses_to_start_with_a_published_development_secret() {
    for (settings, says) in [
        (vec![("PAC_INTERNAL_KEY", DEVELOPMENT_INTERNAL_KEY), ("PAC_DB_ROLE_PASSWORD", "secret")], "published development key"),
        (vec![("PAC_INTERNAL_KEY", KEY), ("PAC_DB_ROLE_PASSWORD", DEVELOPMENT_ROLE_PASSWORD)], "published development password"),
        (
            vec![("PAC_INTERNAL_KEY", KEY), ("PAC_DB_ROLE_PASSWORD", "secret"), ("PAC_REQUIRE_CALLER_CONTEXT", "false")],
            "PAC_REQUIRE_CALLER_CONTEXT=false",
        ),
    ] {
        let (started, stderr) = serve(&settings);
        assert!(!started && stderr.contains(says), "{settings:?}: {stderr}");
    }
    // With secrets of its own it gets as far as the database (which is not there).
    let (started, stderr) = serve(&[("PAC_INTERNAL_KEY", KEY), ("PAC_DB_ROLE_PASSWORD", "secret")]);
    assert!(!started && !stderr.contains("published"), "{stderr}");
}

/// The gateway signs the audit trail: production refuses to start without a key of its own.
#[test]
fn production_gateway_refuses_the_published_audit_key() {
    for (key, says) in
        [(None, "PAC_AUDIT_KEY is required"), (Some(pac_gateway::audit::keys::DEVELOPMENT_AUDIT_KEY), "published development key")]
    {
        let mut command = std::process::Command::new(PAC);
        command
            .args(["serve", "gateway"])
            .env("PAC_ENVIRONMENT", "production")
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("PAC_GATEWAY_ADDR", "127.0.0.1:0")
            .env("PAC_INTERNAL_KEY", KEY)
            .env("PAC_DB_ROLE_PASSWORD", "secret")
            .env_remove("PAC_REQUIRE_CALLER_CONTEXT")
            .env_remove("PAC_AUDIT_KEY");
        if let Some(key) = key {
            command.env("PAC_AUDIT_KEY", key);
        }
        let output = command.output().expect("run pac");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(says), "{key:?}: {stderr}");
    }
}
