//! Enqueue inside the caller's transaction, whichever of the two databases it is on.

use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};

use super::Inserted;
use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use crate::error::Result;
use crate::job::TenantId;
use crate::new_job::NewJob;

/// A connection of the application's own that jobs can be enqueued on, so that they
/// exist if and only if its transaction commits: a PostgreSQL or SQLite connection, bare,
/// from a pool, or a `Transaction` (so `client.enqueue_in(&mut tx, job)` works as is).
///
/// It lets [`Client::enqueue_in`](crate::Client::enqueue_in) serve both stores without a
/// copy per database. Sealed: it covers exactly the databases Forklift has a store for.
pub trait TxConnection: sealed::Sealed + Send {
    /// Inserts jobs on this connection: [`PgStore::job_insert_many_in`] or
    /// [`SqliteStore::job_insert_many_in`], whose docs say how each wakes workers.
    fn job_insert_many_in(
        &mut self,
        tenant: TenantId,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<Inserted>>> + Send;
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! tx_connection {
    ($store:ident: $($ty:ty),+) => {$(
        impl sealed::Sealed for $ty {}

        impl TxConnection for $ty {
            fn job_insert_many_in(
                &mut self,
                tenant: TenantId,
                jobs: &[NewJob],
            ) -> impl Future<Output = Result<Vec<Inserted>>> + Send {
                $store::job_insert_many_in(&mut *self, tenant, jobs)
            }
        }
    )+};
}

tx_connection!(PgStore: PgConnection, Transaction<'_, Postgres>, PoolConnection<Postgres>);
tx_connection!(SqliteStore: SqliteConnection, Transaction<'_, Sqlite>, PoolConnection<Sqlite>);
