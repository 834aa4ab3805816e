//! Property tests of what authentication parses from headers: `Authorization: Bearer`, the
//! cookie, the origin check and the client address behind trusted proxies.
//!
//! Case counts keep the module to a few seconds in debug builds; `PROPTEST_CASES` runs it
//! longer. A failure found here is kept as a plain `#[test]` with its input; proptest keeps no
//! record of failing seeds in the source tree.

use super::*;
use crate::config::trusted_proxy;
use proptest::prelude::*;

/// `cases` runs per property, unless `PROPTEST_CASES` asks for another number.
fn config(cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            cases
        },
        failure_persistence: None,
        ..base
    }
}

/// Header values: anything a client can send (the bytes `HeaderValue` accepts) or text close
/// to what the parsers look for.
fn header_bytes(near: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        near.prop_map(String::into_bytes),
    ]
}

fn headers_with(name: header::HeaderName, values: Vec<Vec<u8>>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.append(name.clone(), value);
        }
    }
    headers
}

/// A request from `peer` with these `X-Forwarded-For` values.
fn request_parts(peer: IpAddr, forwarded: &[String]) -> Parts {
    let mut builder = axum::http::Request::builder().uri("/api/user/me");
    for value in forwarded {
        builder = builder.header("x-forwarded-for", value.as_str());
    }
    let (mut parts, ()) = builder.body(()).expect("a request").into_parts();
    parts
        .extensions
        .insert(ConnectInfo(SocketAddr::new(peer, 40_000)));
    parts
}

/// A few addresses, so hops repeat and some are trusted; some IPv4 ones seen as IPv6
/// (`::ffff:10.0.0.1`), as a server listening on `[::]` sees its IPv4 peers.
fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..4).prop_map(|n| IpAddr::from([10, 0, 0, n])),
        (0u8..4).prop_map(|n| IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, n).to_ipv6_mapped())),
        (0u16..3).prop_map(|n| IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, n])),
        any::<[u8; 4]>().prop_map(IpAddr::from),
    ]
}

/// A `--trusted-proxy`: one of those addresses, or a small network around some of them.
fn proxies() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        address().prop_map(|a| trusted_proxy(&a.to_string()).expect("an address")),
        (0u8..4, 30u8..=32)
            .prop_map(|(n, bits)| trusted_proxy(&format!("10.0.0.{n}/{bits}")).expect("a network")),
        (126u8..=128).prop_map(|bits| trusted_proxy(&format!("fd00::/{bits}")).expect("a network")),
    ]
}

fn is_trusted(trusted: &[IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip.to_canonical()))
}

/// One `X-Forwarded-For` entry: an address, as proxies write it or spaced, or junk.
fn hop() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (address(), any::<bool>()).prop_map(|(a, spaced)| if spaced { format!(" {a} ") } else { a.to_string() }),
        1 => "[0-9a-z.:\\[\\]]{0,8}",
    ]
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn bearer_never_panics_and_gives_only_sane_tokens(
        values in prop::collection::vec(header_bytes("[bB][eE][aA][rR][eE][rR]?[ \t]{0,2}[ -~]{0,12}"), 0..3),
    ) {
        let headers = headers_with(header::AUTHORIZATION, values);
        if let Some(token) = bearer(&headers) {
            prop_assert!(!token.is_empty() && token.len() <= TOKEN_BYTES_MAX);
            prop_assert_eq!(token, token.trim());
            let value = headers.get(header::AUTHORIZATION).unwrap().to_str().unwrap();
            prop_assert!(value[..7].eq_ignore_ascii_case("bearer "), "{value:?}");
            prop_assert!(value.trim_end().ends_with(token));
        }
    }

    #[test]
    fn bearer_tokens_come_back(scheme in "[bB][eE][aA][rR][eE][rR]", token in "[!-~]{1,100}") {
        let headers = headers_with(header::AUTHORIZATION, vec![format!("{scheme} {token}").into_bytes()]);
        prop_assert_eq!(bearer(&headers), Some(token.as_str()));
        // Only Sinkron's own shape of token is looked up in storage.
        let builtin = token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        prop_assert_eq!(is_builtin_token(&token), builtin);
    }

    #[test]
    fn cookie_never_panics_and_finds_the_first_pair_of_its_name(
        raw in prop::collection::vec(header_bytes("[a-z= ;\"]{0,16}"), 0..2),
        pairs in prop::collection::vec(("[a-c]{1,2}", "[!#-+\\--:<-~]{0,8}"), 0..5),
        name in "[a-c]{1,2}",
    ) {
        let _ = cookie(&headers_with(header::COOKIE, raw), &name);
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let headers = headers_with(header::COOKIE, vec![text.join("; ").into_bytes()]);
        let expected = pairs
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty());
        prop_assert_eq!(cookie(&headers, &name), expected);
    }

    #[test]
    fn the_origin_check_never_panics(
        site in prop::option::of(header_bytes("same-origin|same-site|cross-site|none")),
        origin in prop::option::of(header_bytes("https?://[a-z.]{0,8}(:[0-9]{1,5})?")),
        host in prop::option::of(header_bytes("[a-z.]{0,8}(:[0-9]{1,5})?")),
    ) {
        let mut headers = HeaderMap::new();
        for (name, value) in [("sec-fetch-site", site), ("origin", origin), ("host", host)] {
            if let Some(Ok(value)) = value.map(|v| HeaderValue::from_bytes(&v)) {
                headers.insert(name, value);
            }
        }
        let allowed = [HeaderValue::from_static("https://site.example")];
        let _ = same_origin_or_allowed(&headers, &allowed);
    }

    /// Whatever `X-Forwarded-For` says: an untrusted peer is the client; behind trusted
    /// proxies the client is the peer or an address of the header, and every hop after it
    /// (nearer the server) is a trusted proxy.
    #[test]
    fn the_client_address_is_never_taken_past_an_untrusted_hop(
        peer in address(),
        trusted in prop::collection::vec(proxies(), 0..4),
        forwarded in prop::collection::vec(prop::collection::vec(hop(), 0..4), 0..3),
        raw in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        let mut values: Vec<String> = forwarded.iter().map(|hops| hops.join(",")).collect();
        // Visible ASCII only: a line with other bytes is skipped whole
        // (`a_forwarded_line_with_other_bytes_is_skipped`).
        if let Ok(raw) = String::from_utf8(raw) {
            values.push(raw);
        }
        values.retain(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)));
        values.retain(|v| HeaderValue::from_str(v).is_ok());
        let ClientIp(ip) = ClientIp::of(&request_parts(peer, &values), &trusted);
        let ip = ip.expect("the peer is known");
        // Whatever the client sent, an address is taken as its IPv4 form where it has one.
        prop_assert_eq!(ip, ip.to_canonical());
        if !is_trusted(&trusted, peer) {
            prop_assert_eq!(ip, peer.to_canonical());
        } else if ip != peer.to_canonical() {
            let hops: Vec<&str> = values.iter().flat_map(|v| v.split(',')).map(str::trim).collect();
            let at = hops.iter().rposition(|h| h.parse().map(|a: IpAddr| a.to_canonical()) == Ok(ip));
            prop_assert!(at.is_some(), "{ip} is not in {hops:?}");
            for later in &hops[at.unwrap() + 1..] {
                prop_assert!(later.parse().is_ok_and(|a| is_trusted(&trusted, a)), "{later:?} in {hops:?}");
            }
        }
    }

    #[test]
    fn the_client_behind_a_chain_of_trusted_proxies_is_found(
        client in any::<[u8; 4]>().prop_map(|a| IpAddr::from([11, a[1], a[2], a[3]])),
        proxies in prop::collection::vec((0u8..4).prop_map(|n| IpAddr::from([10, 0, 0, n])), 1..4),
        spoofed in prop::collection::vec(address(), 0..3),
    ) {
        let trusted = [trusted_proxy("10.0.0.0/30").expect("a network")];
        // Whatever the client wrote itself comes first; each proxy appends where it got the
        // request from, and the last proxy is the peer.
        let mut hops: Vec<String> = spoofed.iter().map(IpAddr::to_string).collect();
        hops.push(client.to_string());
        hops.extend(proxies[..proxies.len() - 1].iter().map(IpAddr::to_string));
        let parts = request_parts(*proxies.last().unwrap(), &[hops.join(", ")]);
        prop_assert_eq!(ClientIp::of(&parts, &trusted), ClientIp(Some(client)));
    }
}

/// Found by `the_client_address_is_never_taken_past_an_untrusted_hop`: an `X-Forwarded-For`
/// line that was not visible ASCII used to be skipped whole (`to_str` failed), entries and
/// all: one such byte from a client made its proxy the client address, and an address left
/// of the skipped line was taken past it. Each entry is now read from the bytes, and one that
/// is not an address is a malformed hop.
#[test]
fn a_forwarded_entry_of_other_bytes_is_a_malformed_hop() {
    let proxy = IpAddr::from([10, 0, 0, 1]);
    let client = IpAddr::from([192, 0, 2, 7]);
    let appended = HeaderValue::from_bytes(b"\xc2\x80, 192.0.2.7").unwrap();
    let mut parts = request_parts(proxy, &[]);
    parts.headers.insert("x-forwarded-for", appended);
    let trusted = [IpNet::from(proxy)];
    assert_eq!(ClientIp::of(&parts, &trusted), ClientIp(Some(client)));
    let mut parts = request_parts(proxy, &["192.0.2.9".into()]);
    let skipped = HeaderValue::from_bytes(b"\xc2\x80").unwrap();
    parts.headers.append("x-forwarded-for", skipped);
    assert_eq!(ClientIp::of(&parts, &trusted), ClientIp(Some(proxy)));
}

/// A `--trusted-proxy` network trusts each of its addresses, as a load balancer's pool is
/// named by its subnet, and no address outside it.
#[test]
fn a_proxy_network_trusts_each_of_its_addresses_and_no_other() {
    let trusted = [trusted_proxy("10.1.0.0/16").expect("a network")];
    let client = IpAddr::from([203, 0, 113, 5]);
    for peer in [[10, 1, 2, 3], [10, 1, 255, 254]] {
        let parts = request_parts(IpAddr::from(peer), &["203.0.113.5, 10.1.9.9".into()]);
        assert_eq!(
            ClientIp::of(&parts, &trusted),
            ClientIp(Some(client)),
            "{peer:?}"
        );
    }
    let outside = IpAddr::from([10, 2, 0, 1]);
    let parts = request_parts(outside, &["203.0.113.5".into()]);
    assert_eq!(ClientIp::of(&parts, &trusted), ClientIp(Some(outside)));
}

/// A server listening on `[::]` sees an IPv4 peer as `::ffff:a.b.c.d`: it is that IPv4
/// address, both to the trusted networks and as the client counted by the limits (one client
/// is not two because it arrived over both).
#[test]
fn an_ipv4_address_seen_as_ipv6_is_the_ipv4_address() {
    let mapped = |ip: [u8; 4]| IpAddr::from(std::net::Ipv4Addr::from(ip).to_ipv6_mapped());
    let trusted = [trusted_proxy("10.0.0.0/8").expect("a network")];
    let parts = request_parts(mapped([10, 0, 0, 1]), &["::ffff:203.0.113.5".into()]);
    let client = IpAddr::from([203, 0, 113, 5]);
    assert_eq!(ClientIp::of(&parts, &trusted), ClientIp(Some(client)));
    let direct = request_parts(mapped([192, 0, 2, 1]), &["203.0.113.9".into()]);
    let peer = IpAddr::from([192, 0, 2, 1]);
    assert_eq!(ClientIp::of(&direct, &trusted), ClientIp(Some(peer)));
}
