//! TLS on both sides against a real redis-server built with TLS: certificates generated
//! here (rcgen), Redis on its `tls-port` requiring a client certificate, moat accepting TLS
//! clients on `proxy.tls_listen`, and a small rustls client.
//!
//! Redis keeps its plain port too: the testkit checks readiness and reads INFO through it;
//! moat only ever uses the TLS port.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bulk, command, start_moat};
use moat_proxy::{BackendTlsConfig, ClientTlsConfig, Config, RunningProxy};
use moat_testkit::{RedisServer, free_port};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Plays a remote client: the guard trusts only 127.0.0.1.
const UNTRUSTED: [u8; 4] = [127, 0, 0, 2];

/// A CA that signs certificates into files of a directory.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for 127.0.0.1 and localhost (server and client use), valid
    /// unless `expired`; returns the PEM certificate and key.
    fn leaf(&self, name: &str, expired: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// Every file the tests use, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            ca: Ca::new("moat test CA"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name.crt` and `name.key` for a leaf of `ca`; returns their paths.
    fn write_leaf(&self, ca: &Ca, name: &str, expired: bool) -> (PathBuf, PathBuf) {
        let (cert, key) = ca.leaf(name, expired);
        let (c, k) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert).expect("write cert");
        std::fs::write(&k, key).expect("write key");
        (c, k)
    }

    fn write_ca(&self) -> PathBuf {
        let p = self.path("ca.crt");
        std::fs::write(&p, &self.ca.pem).expect("write CA");
        p
    }
}

/// A redis-server with a TLS port serving `cert`/`key` and requiring client certificates
/// from `ca`; returns it and its TLS address.
fn tls_redis(cert: &Path, key: &Path, ca: &Path) -> (RedisServer, SocketAddr) {
    let port = free_port();
    let redis = RedisServer::builder()
        .config(format!("tls-port {port}"))
        .config(format!("tls-cert-file {}", cert.display()))
        .config(format!("tls-key-file {}", key.display()))
        .config(format!("tls-ca-cert-file {}", ca.display()))
        .config("tls-auth-clients yes")
        .start()
        .expect("redis-server with TLS starts");
    (redis, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Moat with TLS on both sides: clients must show a certificate from the test CA; moat
/// shows `client` to Redis.
fn tls_config(pki: &Pki, c: &mut Config, server: (&Path, &Path), client: (&Path, &Path)) {
    let ca = pki.write_ca();
    c.proxy.tls_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.proxy.tls = Some(ClientTlsConfig {
        cert_file: server.0.into(),
        key_file: server.1.into(),
        client_ca_file: Some(ca.clone()),
        require_client_cert: true,
        ..ClientTlsConfig::default()
    });
    c.backend.tls = Some(BackendTlsConfig {
        ca_file: Some(ca),
        cert_file: Some(client.0.into()),
        key_file: Some(client.1.into()),
        ..BackendTlsConfig::default()
    });
}

/// A blocking TLS client (rustls), from 127.0.0.2.
struct TlsClient {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

fn client_config(ca: &Path, cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA cert")).expect("add root");
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    Arc::new(match cert {
        Some((c, k)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(k).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    })
}

fn tcp_from(src: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from((src, 0)).into())
        .expect("bind source");
    socket.connect(&addr.into()).expect("connect");
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsClient {
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("client");
        TlsClient {
            tls: rustls::StreamOwned::new(conn, tcp_from(UNTRUSTED, addr)),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes)?;
        self.tls.flush()
    }

    /// Reads until `expect` bytes arrived (or the connection ends or fails).
    fn read(&mut self, expect: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 << 10];
        while out.len() < expect {
            let n = self.tls.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        Ok(out)
    }

    fn call(&mut self, args: &[&[u8]], reply_len: usize) -> std::io::Result<Vec<u8>> {
        self.send(&command(args))?;
        self.read(reply_len)
    }

    /// The certificate the server showed.
    fn server_cert(&self) -> Vec<u8> {
        self.tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}

fn pem_der(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .expect("cert")
        .next()
        .expect("one cert")
        .expect("cert")
        .to_vec()
}

fn tls_handshakes(moat: &RunningProxy, outcome: &str) -> u64 {
    moat.control()
        .snapshot()
        .tls_handshakes
        .iter()
        .find(|(o, _)| *o == outcome)
        .map_or(0, |(_, n)| *n)
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what}: not within the bound");
}

/// Moat and Redis, TLS on both sides, and the files.
struct Setup {
    moat: RunningProxy,
    _redis: RedisServer,
    pki: Pki,
    client: Arc<rustls::ClientConfig>,
}

fn setup(tweak: impl FnOnce(&mut Config)) -> Setup {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let redis_cert = pki.write_leaf(&pki.ca, "redis", false);
    let moat_cert = pki.write_leaf(&pki.ca, "moat", false);
    let app_cert = pki.write_leaf(&pki.ca, "app", false);
    let (redis, tls_port) = tls_redis(&redis_cert.0, &redis_cert.1, &ca);
    let moat = start_moat(tls_port, |c| {
        tls_config(
            &pki,
            c,
            (&moat_cert.0, &moat_cert.1),
            (&moat_cert.0, &moat_cert.1),
        );
        tweak(c);
    });
    let client = client_config(&ca, Some((&app_cert.0, &app_cert.1)));
    Setup {
        moat,
        _redis: redis,
        pki,
        client,
    }
}

impl Setup {
    fn tls_addr(&self) -> SocketAddr {
        self.moat.tls_addr().expect("a TLS listener")
    }
}

#[test]
fn set_get_and_a_pipeline_through_tls_on_both_sides() {
    let s = setup(|_| {});
    let mut c = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert_eq!(c.call(&[b"SET", b"k", b"v"], 5).expect("SET"), b"+OK\r\n");
    assert_eq!(c.call(&[b"GET", b"k"], 7).expect("GET"), b"$1\r\nv\r\n");

    // A pipeline of 200 SETs and GETs of a 10 KB value, in one write: more than a TLS
    // record each way.
    let value = vec![b'x'; 10 << 10];
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        let key = format!("p{i}");
        batch.extend(command(&[b"SET", key.as_bytes(), &value]));
        batch.extend(command(&[b"GET", key.as_bytes()]));
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend(bulk(&value));
    }
    c.send(&batch).expect("pipeline");
    let got = c.read(expected.len()).expect("replies");
    assert!(
        got == expected,
        "pipeline replies differ ({} bytes)",
        got.len()
    );

    // A transaction runs on a dedicated (pinned) connection, over TLS too.
    let mut tx = command(&[b"MULTI"]);
    tx.extend(command(&[b"INCR", b"n"]));
    tx.extend(command(&[b"EXEC"]));
    c.send(&tx).expect("MULTI");
    let want = b"+OK\r\n+QUEUED\r\n*1\r\n:1\r\n";
    assert_eq!(c.read(want.len()).expect("EXEC"), want);

    // The plain listener still serves, on the same data.
    let mut plain = common::Raw::connect(s.moat.local_addr());
    assert_eq!(plain.cmd(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    assert_eq!(tls_handshakes(&s.moat, "ok"), 1);
    assert_eq!(
        s.moat.control().snapshot().counter("backend_tls_failures"),
        0
    );
}

#[test]
fn a_client_certificate_from_another_ca_or_none_is_refused() {
    let s = setup(|c| c.guard.strikes_to_ban = 100);
    let other = Ca::new("another CA");
    let stranger = s.pki.write_leaf(&other, "stranger", false);
    let ca = s.pki.path("ca.crt");
    for cert in [Some((stranger.0.as_path(), stranger.1.as_path())), None] {
        let mut c = TlsClient::connect(s.tls_addr(), client_config(&ca, cert));
        // TLS 1.3: the client finishes its side first; the refusal comes with its first
        // read.
        let answer = c.call(&[b"PING"], 7);
        assert!(
            !matches!(&answer, Ok(b) if b.starts_with(b"+PONG")),
            "served without a valid certificate: {answer:?}"
        );
    }
    eventually("two failed handshakes counted", || {
        tls_handshakes(&s.moat, "failed") == 2
    });
    // A valid certificate still works.
    let mut c = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert_eq!(c.call(&[b"PING"], 7).expect("PING"), b"+PONG\r\n");
}

#[test]
fn plain_text_to_the_tls_port_is_closed_cleanly_and_struck() {
    let s = setup(|c| c.guard.strikes_to_ban = 2);
    for _ in 0..2 {
        let mut tcp = tcp_from(UNTRUSTED, s.tls_addr());
        tcp.write_all(b"PING\r\n").expect("write");
        // Whatever comes back (a TLS alert at most) ends with the close.
        let mut buf = Vec::new();
        let _ = tcp.read_to_end(&mut buf);
        assert!(
            !buf.windows(4).any(|w| w == b"PONG"),
            "plain text was served"
        );
    }
    eventually("two failed handshakes counted", || {
        tls_handshakes(&s.moat, "failed") == 2
    });
    // Two strikes ban the source, on both listeners.
    let banned = s.moat.guard().bans(Instant::now());
    assert!(
        banned
            .iter()
            .any(|(net, _)| net.contains(&std::net::IpAddr::from(UNTRUSTED))),
        "{banned:?}"
    );
    // Moat keeps serving others.
    let mut plain = common::Raw::connect(s.moat.local_addr());
    assert_eq!(plain.cmd(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn a_silent_client_is_cut_at_the_handshake_deadline() {
    let s = setup(|c| {
        if let Some(t) = &mut c.proxy.tls {
            t.handshake_timeout = Duration::from_millis(300);
        }
    });
    let mut tcp = tcp_from(UNTRUSTED, s.tls_addr());
    let mut buf = [0u8; 64];
    // Closed by moat (EOF or a reset), not by the test's 10 s read timeout.
    match tcp.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("moat sent {n} bytes to a silent client"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "not closed: {e}"
        ),
    }
    eventually("the timeout counted", || {
        tls_handshakes(&s.moat, "timeout") == 1
    });
    let _ = tcp.shutdown(Shutdown::Both);
}

#[test]
fn a_handshake_beyond_the_cap_is_closed_at_once() {
    let s = setup(|c| {
        if let Some(t) = &mut c.proxy.tls {
            t.max_handshakes = 1;
            t.handshake_timeout = Duration::from_secs(20);
        }
    });
    // One silent connection holds the only handshake slot.
    let _silent = tcp_from(UNTRUSTED, s.tls_addr());
    eventually("the first handshake in progress", || {
        s.moat.guard().clients() >= 1
    });
    let mut c = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert!(c.call(&[b"PING"], 7).map_or(true, |b| b.is_empty()));
    eventually("the refusal counted", || {
        tls_handshakes(&s.moat, "busy") == 1
    });
}

#[test]
fn a_backend_with_an_expired_or_foreign_certificate_gives_clear_errors() {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let other = Ca::new("another CA");
    let moat_cert = pki.write_leaf(&pki.ca, "moat", false);
    let app_cert = pki.write_leaf(&pki.ca, "app", false);
    for (name, bad) in [
        ("expired", pki.write_leaf(&pki.ca, "expired", true)),
        ("foreign", pki.write_leaf(&other, "foreign", false)),
    ] {
        let (redis, tls_port) = tls_redis(&bad.0, &bad.1, &ca);
        let moat = start_moat(tls_port, |c| {
            tls_config(
                &pki,
                c,
                (&moat_cert.0, &moat_cert.1),
                (&moat_cert.0, &moat_cert.1),
            );
            c.backend.connect_timeout = Duration::from_millis(500);
        });
        let mut c = TlsClient::connect(
            moat.tls_addr().expect("TLS listener"),
            client_config(&ca, Some((&app_cert.0, &app_cert.1))),
        );
        c.send(&command(&[b"GET", b"k"])).expect("send");
        let reply = c.read(5).expect("reply");
        assert!(
            reply.starts_with(b"-ERR moat: "),
            "{name}: {}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            moat.control().snapshot().counter("backend_tls_failures") >= 1,
            "{name}: not counted"
        );
        // Nothing reached Redis's command table.
        let calls = redis.command(&["INFO", "commandstats"]).expect("INFO");
        assert!(
            !String::from_utf8_lossy(&calls).contains("cmdstat_get"),
            "{name}: a command went through"
        );
    }
}

#[test]
fn insecure_skip_verify_accepts_the_certificate_it_would_refuse() {
    let pki = Pki::new();
    let ca = pki.write_ca();
    let moat_cert = pki.write_leaf(&pki.ca, "moat", false);
    let app_cert = pki.write_leaf(&pki.ca, "app", false);
    let expired = pki.write_leaf(&pki.ca, "expired", true);
    let (_redis, tls_port) = tls_redis(&expired.0, &expired.1, &ca);
    let moat = start_moat(tls_port, |c| {
        tls_config(
            &pki,
            c,
            (&moat_cert.0, &moat_cert.1),
            (&moat_cert.0, &moat_cert.1),
        );
        if let Some(t) = &mut c.backend.tls {
            t.ca_file = None;
            t.insecure_skip_verify = true;
        }
    });
    let mut c = TlsClient::connect(
        moat.tls_addr().expect("TLS listener"),
        client_config(&ca, Some((&app_cert.0, &app_cert.1))),
    );
    assert_eq!(c.call(&[b"SET", b"k", b"v"], 5).expect("SET"), b"+OK\r\n");
}

#[test]
fn reload_swaps_the_server_certificate_for_new_connections() {
    let s = setup(|_| {});
    let (cert, key) = (s.pki.path("moat.crt"), s.pki.path("moat.key"));
    let first = pem_der(&cert);
    let mut old = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert_eq!(old.call(&[b"PING"], 7).expect("PING"), b"+PONG\r\n");
    assert_eq!(old.server_cert(), first);

    // Rotated in place, same paths: the config does not change, the files do.
    s.pki.write_leaf(&s.pki.ca, "moat", false);
    let second = pem_der(&cert);
    assert_ne!(first, second);
    let control = s.moat.control();
    control.reload((*control.config()).clone()).expect("reload");
    let mut new = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert_eq!(new.call(&[b"PING"], 7).expect("PING"), b"+PONG\r\n");
    assert_eq!(new.server_cert(), second);
    // The open connection keeps working.
    assert_eq!(old.call(&[b"PING"], 7).expect("PING"), b"+PONG\r\n");

    // A key that does not match refuses the reload; the running certificate stays.
    std::fs::write(&key, KeyPair::generate().expect("key").serialize_pem()).expect("key");
    assert!(control.reload((*control.config()).clone()).is_err());
    let mut after = TlsClient::connect(s.tls_addr(), s.client.clone());
    assert_eq!(after.call(&[b"PING"], 7).expect("PING"), b"+PONG\r\n");
    assert_eq!(after.server_cert(), second);
}
