//! Under `--dev` the API serves requests without a key, so only programs on this machine
//! may call it. Listening on loopback keeps other machines out, but not web pages: a page
//! open in the developer's browser can send a body-less `POST /queues/default/pause` to
//! `localhost` (no CORS preflight is needed for that), or point its own host name at
//! 127.0.0.1 (DNS rebinding) and then read the answers. So under `--dev` a request is
//! refused (403) unless its `Host` names the loopback interface and its `Origin`, when a
//! browser sent one, is a loopback page. Programs such as curl or the CLI send no
//! `Origin` and keep working.

use axum::extract::Request;
use axum::http::header::{HOST, ORIGIN};
use axum::http::uri::{Authority, Scheme, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Middleware for `--dev`: 403 for a non-loopback `Host` or `Origin`.
pub async fn loopback_only(request: Request, next: Next) -> Response {
    let headers = request.headers();
    // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 in `Host`.
    // A browser always sends one of them, so a request with neither comes from a program.
    let hosts_ok = request.uri().authority().is_none_or(is_loopback)
        && headers.get_all(HOST).iter().all(|h| {
            h.to_str()
                .ok()
                .and_then(|h| h.parse::<Authority>().ok())
                .is_some_and(|a| is_loopback(&a))
        });
    if !hosts_ok {
        return ApiError::forbidden(
            "--dev serves only requests addressed to localhost, 127.0.0.1 or [::1]",
        )
        .into_response();
    }
    let origins_ok = headers.get_all(ORIGIN).iter().all(|o| {
        o.to_str()
            .ok()
            .and_then(|o| o.parse::<Uri>().ok())
            .is_some_and(|uri| is_loopback_origin(&uri))
    });
    if !origins_ok {
        return ApiError::forbidden(
            "--dev serves no requests from web pages of other origins than this machine",
        )
        .into_response();
    }
    next.run(request).await
}

/// `localhost`, or an address of the loopback interface (127.0.0.0/8, `[::1]`), with any
/// port.
fn is_loopback(authority: &Authority) -> bool {
    let host = authority.host();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An `http` or `https` origin on a loopback host. `null` (sandboxed frames, files) is not.
fn is_loopback_origin(origin: &Uri) -> bool {
    let web = origin.scheme() == Some(&Scheme::HTTP) || origin.scheme() == Some(&Scheme::HTTPS);
    web && origin.authority().is_some_and(is_loopback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_localhost_and_loopback_addresses_with_any_port() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "127.1.2.3:9",
        ] {
            assert!(is_loopback(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]",
            "0.0.0.0",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_loopback(&bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn loopback_origins_are_web_pages_on_a_loopback_host() {
        for ok in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:8080",
        ] {
            assert!(is_loopback_origin(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "http://evil.example",
            "null",
            "file:///",
            "chrome-extension://abc",
            "localhost:3000",
        ] {
            let loopback = bad.parse::<Uri>().is_ok_and(|u| is_loopback_origin(&u));
            assert!(!loopback, "{bad}");
        }
    }
}
