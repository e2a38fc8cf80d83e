//! A pool that also works behind a transaction pooler (PgBouncer in `pool_mode =
//! transaction`).
//!
//! sqlx runs a statement with binds in two exchanges: parse (and describe), then bind and
//! execute, each ending in a `Sync`. A transaction pooler hands the server connection back
//! at each `Sync` outside a transaction, so the second exchange may reach another server
//! connection, where the statement does not exist or, worse, another client's unnamed
//! statement does. And sqlx names the statements it keeps (`sqlx_s_1`, ...), which collide
//! with other clients' on a shared server connection. So behind a pooler every statement
//! is unnamed and runs in a transaction of its own, which keeps one server connection
//! from parse to execute: begin, parse, bind and execute, commit: four round trips where
//! a direct connection's kept statement takes one, the price of the pooler.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::{PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Describe, Either, Execute, Executor, PgPool, Postgres};

/// A pool and how to run statements on it (see the module docs).
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: PgPool,
    /// Behind a transaction pooler: statements unnamed, each in its own transaction.
    pub pooled: bool,
}

impl Db {
    /// Whether statements may be kept on the server: false behind a pooler. Statements
    /// run in a transaction the caller opened must say so themselves
    /// (`.persistent(db.named())`), since only the pool's executor does it for them.
    pub fn named(&self) -> bool {
        !self.pooled
    }
}

/// A statement with its server-side name taken away (see the module docs).
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(&self) -> &'q str {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement<'q>> {
        self.0.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_many(query);
        }
        // The rows are gathered before the commit: the store's results are bounded (a
        // fetch, a page), and a stream cannot hold the transaction open for its reader.
        let pool = self.pool.clone();
        let all = async move {
            let mut tx = pool.begin().await?;
            let items: Vec<_> = tx.fetch_many(Unnamed(query)).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(futures::stream::iter(items.into_iter().map(Ok)))
        };
        futures::stream::once(all).try_flatten().boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.pooled {
            return self.pool.fetch_optional(query);
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let row = tx.fetch_optional(Unnamed(query)).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    // Both name a statement outside a transaction, which a pooler breaks (and leaves on a
    // shared server connection); the store uses neither, so behind one they refuse.
    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        if self.pooled {
            return Box::pin(async { Err(not_behind_a_pooler()) });
        }
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        if self.pooled {
            return Box::pin(async { Err(not_behind_a_pooler()) });
        }
        self.pool.describe(sql)
    }
}

fn not_behind_a_pooler() -> sqlx::Error {
    sqlx::Error::Configuration(
        "statements are not prepared ahead behind a transaction pooler".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No server is needed: the refusal comes before any connection is made.
    #[tokio::test]
    async fn behind_a_pooler_prepare_and_describe_are_refused_without_a_connection() {
        let options: sqlx::postgres::PgConnectOptions =
            "postgres://nobody@127.0.0.1:1/none".parse().unwrap();
        let db = Db {
            pool: sqlx::postgres::PgPoolOptions::new().connect_lazy_with(options),
            pooled: true,
        };
        let prepared = (&db).prepare_with("select 1", &[]).await;
        assert!(matches!(prepared, Err(sqlx::Error::Configuration(_))));
        let described = (&db).describe("select 1").await;
        assert!(matches!(described, Err(sqlx::Error::Configuration(_))));
    }
}
