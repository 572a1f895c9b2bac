//! A SIP user agent over secure WebSocket (RFC 7118), as a browser's SIP
//! library speaks it: rustls + tungstenite, messages written by hand, so a
//! test sees every byte the daemon sends over the browser's connection.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A self-signed ECDSA certificate for 127.0.0.1 in `dir`:
/// (`cert.pem`, `key.pem`).
pub fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// A TLS connection to `addr` trusting only `cert` (ring, as the daemon).
pub fn tls_connect(addr: SocketAddr, cert: &Path) -> Tls {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("cert file") {
        roots.add(c.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls client");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    rustls::StreamOwned::new(conn, tcp)
}

/// One HTTP/1.1 GET over TLS: (status line and headers, body).
pub fn https_get(addr: SocketAddr, cert: &Path, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = tls_connect(addr, cert);
    s.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("write");
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // The server closes without close_notify after `Connection: close`.
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("read {path}: {e}"),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    (head.to_owned(), body.to_owned())
}

/// The WebSocket handshake with `protocol` (None: no subprotocol asked).
pub fn ws_connect(
    addr: SocketAddr,
    cert: &Path,
    path: &str,
    protocol: Option<&str>,
) -> Result<(WebSocket<Tls>, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = format!("wss://127.0.0.1:{}{path}", addr.port()).into_client_request().expect("request");
    if let Some(p) = protocol {
        req.headers_mut().insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
    }
    tungstenite::client(req, tls_connect(addr, cert)).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => tungstenite::Error::Io(ErrorKind::WouldBlock.into()),
    })
}

/// A browser-like SIP phone on one secure WebSocket.
pub struct WsPhone {
    pub ws: WebSocket<Tls>,
    /// Its made-up host (`*.invalid`, as JsSIP and SIP.js use).
    pub host: String,
    pub contact: String,
    seq: u32,
}

impl WsPhone {
    /// Connects to `addr` with the `sip` subprotocol.
    pub fn connect(addr: SocketAddr, cert: &Path) -> Self {
        let (ws, resp) = ws_connect(addr, cert, "/sip", Some("sip")).expect("websocket handshake");
        assert_eq!(
            resp.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
            Some("sip"),
            "RFC 7118: the server must select the sip subprotocol"
        );
        let host = format!("{:x}.invalid", super::wall_now().elapsed().as_nanos() ^ u128::from(std::process::id()));
        let contact = format!("sip:ph{}@{host};transport=ws", std::process::id());
        WsPhone { ws, host, contact, seq: 0 }
    }

    /// Sends one SIP message as one text frame.
    pub fn send(&mut self, msg: &str) {
        self.ws.send(Message::text(msg.replace('\n', "\r\n"))).expect("ws send");
    }

    /// The next SIP message within `secs`, pings answered on the way
    /// (`None`: none came, `Err`: the connection closed).
    pub fn recv(&mut self, secs: u64) -> Result<Option<String>, String> {
        let deadline = super::wall_now() + Duration::from_secs(secs);
        while super::wall_now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Ok(Some(t.to_string())),
                Ok(Message::Binary(b)) => return Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                Ok(Message::Close(_)) => return Err("closed by the server".into()),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }

    /// Waits for a message whose first line starts with `start` (a
    /// request's method or `SIP/2.0 200`); panics after `secs`.
    pub fn expect(&mut self, start: &str, secs: u64) -> String {
        let deadline = super::wall_now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        while super::wall_now() < deadline {
            match self.recv(1) {
                Ok(Some(m)) if m.starts_with(start) => return m,
                Ok(Some(m)) => seen.push(m.lines().next().unwrap_or("").to_owned()),
                Ok(None) => {}
                Err(e) => panic!("waiting for {start}: {e}; seen {seen:?}"),
            }
        }
        panic!("no {start} within {secs} s; seen {seen:?}")
    }

    /// REGISTER with digest (MD5) after the 401; returns the final answer.
    pub fn register(&mut self, user: &str, domain: &str, password: &str, expires: u32) -> String {
        let call_id = format!("reg-{}", self.host);
        let first = self.register_request(user, domain, &call_id, expires, None);
        self.send(&first);
        let challenge = self.expect("SIP/2.0 ", 5);
        if !challenge.starts_with("SIP/2.0 401") {
            return challenge;
        }
        let www = header(&challenge, "WWW-Authenticate").expect("WWW-Authenticate");
        let realm = param(&www, "realm").expect("realm");
        let nonce = param(&www, "nonce").expect("nonce");
        let uri = format!("sip:{domain}");
        let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let cnonce = "0a4f113b";
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        let auth = format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"{cnonce}\""
        );
        let second = self.register_request(user, domain, &call_id, expires, Some(&auth));
        self.send(&second);
        self.expect("SIP/2.0 ", 5)
    }

    fn register_request(
        &mut self,
        user: &str,
        domain: &str,
        call_id: &str,
        expires: u32,
        auth: Option<&str>,
    ) -> String {
        self.seq += 1;
        let auth = auth.map(|a| format!("Authorization: {a}\n")).unwrap_or_default();
        format!(
            "REGISTER sip:{domain} SIP/2.0\n\
             Via: SIP/2.0/WSS {host};branch=z9hG4bKreg{seq}\n\
             Max-Forwards: 69\n\
             To: <sip:{user}@{domain}>\n\
             From: <sip:{user}@{domain}>;tag=regtag\n\
             Call-ID: {call_id}\n\
             CSeq: {seq} REGISTER\n\
             Contact: <{contact}>;expires={expires}\n\
             {auth}Expires: {expires}\n\
             Content-Length: 0\n\n",
            host = self.host,
            seq = self.seq,
            contact = self.contact,
        )
    }

    /// A response to `req` (its Via, From, To, Call-ID and CSeq), our tag
    /// on To, and an optional SDP body.
    pub fn answer(&mut self, req: &str, status: &str, sdp: Option<&str>) {
        let mut out = format!("SIP/2.0 {status}\n");
        for line in req.split("\r\n").take_while(|l| !l.is_empty()).skip(1) {
            let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            match name.as_str() {
                "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" => out.push_str(&format!("{line}\n")),
                "to" | "t" if !line.contains("tag=") => out.push_str(&format!("{line};tag=phonetag\n")),
                "to" | "t" => out.push_str(&format!("{line}\n")),
                _ => {}
            }
        }
        out.push_str(&format!("Contact: <{}>\n", self.contact));
        match sdp {
            // `send` turns every LF into CRLF, the body's too.
            Some(sdp) => out.push_str(&format!(
                "Content-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
                sdp.replace('\n', "\r\n").len()
            )),
            None => out.push_str("Content-Length: 0\n\n"),
        }
        self.send(&out);
    }
}

/// The first value of header `name` (case-insensitive) in `msg`.
pub fn header(msg: &str, name: &str) -> Option<String> {
    msg.split("\r\n").take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

fn param(value: &str, name: &str) -> Option<String> {
    let i = value.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = value.get(i..)?;
    Some(rest[..rest.find('"')?].to_owned())
}

fn md5_hex(s: &str) -> String {
    use md5::Digest;
    md5::Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A daemon with a `wss://` listener on a self-signed certificate, portal
/// `acme` (acme.example.com, user alice) and a trunk from 127.0.0.2 whose
/// +15550001 rings alice; `sip` goes into `[sip]`, `tail` after it.
/// Returns the daemon (started) and the certificate to trust.
pub fn wss_daemon(sip: &str, tail: &str) -> (super::daemon::Daemon, std::path::PathBuf) {
    wss_daemon_with_trunk(sip, tail, "")
}

/// [`wss_daemon`] with `trunk_tail` appended to the trunk (its
/// `[trunk.outbound]`, say).
pub fn wss_daemon_with_trunk(sip: &str, tail: &str, trunk_tail: &str) -> (super::daemon::Daemon, std::path::PathBuf) {
    let certs = tempfile::tempdir().expect("tempdir").keep();
    let (cert, key) = self_signed(&certs);
    let config = format!(
        "{sip}\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{tail}\n\
         [[trunk]]\nname = \"acme-pbx\"\nportal = \"acme\"\nsources = [\"127.0.0.2/32\"]\n\
         [[trunk.route]]\nnumber = \"+15550001\"\nusers = [\"alice\"]\nring_timeout_s = 8\n{trunk_tail}",
        cert.display(),
        key.display()
    );
    let mut d = super::daemon::Daemon::prepare(&config);
    let text = std::fs::read_to_string(&d.config).expect("config");
    let text = text.replace(
        "listen = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]",
        "listen = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\", \"wss://127.0.0.1:0\"]",
    );
    std::fs::write(&d.config, text).expect("config");
    d.seed_portal("acme", "acme.example.com", &[("alice", "alice-secret-1")]);
    d.start();
    (d, cert)
}
