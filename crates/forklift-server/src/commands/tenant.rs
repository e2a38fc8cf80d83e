//! `forklift tenant …`: tenants and API keys, straight on the database.

use anyhow::{Context, bail};
use forklift::Store;

use super::open_store;
use crate::auth::issue_key;
use crate::cli::TenantCommand;

pub async fn run(cmd: TenantCommand) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name, json, db } => {
            let store = open_store(&db).await?;
            let tenant = store.tenant_create(&name).await?;
            let key = issue_key(&*store, tenant.tenant_id).await?;
            print_key(json, &tenant.tenant_id.to_string(), &key.key);
        }
        TenantCommand::AddKey { name, json, db } => {
            let store = open_store(&db).await?;
            let tenant = find(&*store, &name).await?;
            let key = issue_key(&*store, tenant.tenant_id).await?;
            print_key(json, &tenant.tenant_id.to_string(), &key.key);
        }
        TenantCommand::List { db } => {
            let store = open_store(&db).await?;
            let keys = store.api_key_list().await?;
            println!(
                "{:<36}  {:<24}  {:<11}  {:<20}  REVOKED",
                "TENANT_ID", "NAME", "KEY_PREFIX", "KEY_CREATED"
            );
            for t in store.tenant_list().await? {
                let mine: Vec<_> = keys.iter().filter(|k| k.tenant_id == t.tenant_id).collect();
                if mine.is_empty() {
                    println!("{:<36}  {:<24}  {:<11}", t.tenant_id, t.name, "-");
                }
                for k in mine {
                    let revoked = k
                        .revoked_at
                        .map(|r| r.format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default();
                    println!(
                        "{:<36}  {:<24}  fk_{:<8}  {:<20}  {revoked}",
                        t.tenant_id,
                        t.name,
                        k.prefix,
                        k.created_at.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        TenantCommand::RevokeKey { prefix, db } => {
            let store = open_store(&db).await?;
            let prefix = prefix.trim_start_matches("fk_");
            let prefix = prefix.split('_').next().unwrap_or_default();
            if !store.api_key_revoke(prefix).await? {
                bail!("no live API key with prefix {prefix}");
            }
            println!("revoked fk_{prefix}");
        }
    }
    Ok(())
}

async fn find(store: &dyn Store, name: &str) -> anyhow::Result<forklift::store::Tenant> {
    store
        .tenant_list()
        .await?
        .into_iter()
        .find(|t| t.name == name)
        .with_context(|| format!("no tenant named `{name}`"))
}

fn print_key(json: bool, tenant_id: &str, key: &str) {
    if json {
        println!(
            "{}",
            serde_json::json!({ "tenant_id": tenant_id, "api_key": key })
        );
    } else {
        println!("tenant_id: {tenant_id}");
        println!("api_key:   {key}");
        println!("(the key is shown only now: keep it)");
    }
}
