//! Accepting the libpq URL ratchet prints for a server on a Unix socket.
//!
//! ratchet's embedded server (and `ratchet db url`) names its databases as
//! `postgresql://postgres@/DB?host=/path/to/socket-dir`: a user, an empty host, and the socket
//! directory as the `host` parameter. libpq (psql) accepts that; sqlx 0.9, which both this
//! peer and DBOS connect through, does not (the `url` crate refuses "empty host" once a user is
//! given). [`for_sqlx`] fills the empty host with `localhost`, which sqlx then overrides with the
//! `host=/...` parameter, so the connection still goes to the socket. Any other URL is returned
//! unchanged.
//!
//! [`with_read_committed`] adds the connection parameter that makes a connection's transactions
//! `READ COMMITTED` whatever the server's default (sqlx's `options[NAME]=VALUE`, sent as
//! `-c NAME=VALUE` at start-up), for DBOS's own connections.

/// `url`, with an empty host after a user filled in as `localhost`.
pub fn for_sqlx(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    if authority.ends_with('@') {
        format!(
            "{}localhost{}",
            &url[..authority_start + authority_len],
            &rest[authority_len..]
        )
    } else {
        url.to_owned()
    }
}

/// `url` (as sqlx reads it), with its connections' transactions at `READ COMMITTED`.
pub fn with_read_committed(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[default_transaction_isolation]=read%20committed")
}

#[cfg(test)]
mod tests {
    use super::{for_sqlx, with_read_committed};
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;

    #[test]
    fn read_committed_is_a_startup_option_sqlx_understands() {
        for url in ["postgres://u@h/db", "postgres://u@localhost/db?host=/tmp/s"] {
            let options = PgConnectOptions::from_str(&with_read_committed(url)).unwrap();
            assert_eq!(
                options.get_options(),
                Some(r"-c default_transaction_isolation=read\ committed"),
                "{url}"
            );
            assert_eq!(options.get_database(), Some("db"));
        }
    }

    #[test]
    fn an_empty_host_after_a_user_becomes_localhost() {
        assert_eq!(
            for_sqlx("postgresql://postgres@/ratchet?host=/work/main/.ratchet/s"),
            "postgresql://postgres@localhost/ratchet?host=/work/main/.ratchet/s"
        );
        assert_eq!(
            for_sqlx("postgres://postgres@?host=/tmp/s"),
            "postgres://postgres@localhost?host=/tmp/s"
        );
    }

    #[test]
    fn other_urls_are_unchanged() {
        for url in [
            "postgres://u:p@db.example:5432/x",
            "postgres:///x?host=/tmp/s",
            "postgres://localhost/x",
            "not a url",
        ] {
            assert_eq!(for_sqlx(url), url);
        }
    }
}
