//! A stand-in for the host's Nix daemon: it speaks the opening of the worker protocol,
//! reports a chosen protocol version and trust flag, and records the uid of every client
//! (`SO_PEERCRED`), so a test can tell whose question the activator asked.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// How the stand-in answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Greet with protocol 1.`minor` and, from 1.35 on, this trust flag (1 trusted, 2 not).
    Greet { minor: u64, trust: u64 },
    /// Close every connection at once, as a daemon does for a user `allowed-users` leaves out.
    HangUp,
    /// Accept and never answer.
    Silent,
}

pub struct FakeDaemon {
    /// The directory to bind at `/nix/var/nix/daemon-socket` inside.
    pub dir: PathBuf,
    pub socket: PathBuf,
    peers: Arc<Mutex<Vec<u32>>>,
}

impl FakeDaemon {
    /// Listen at `dir/socket` (mode 0666, like the real socket) until the test ends.
    pub fn start(dir: &Path, behaviour: Behaviour) -> FakeDaemon {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.join("socket");
        let listener = UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&peers);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let creds =
                    nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
                        .unwrap();
                seen.lock().unwrap().push(creds.uid());
                std::thread::spawn(move || serve(conn, behaviour));
            }
        });
        FakeDaemon {
            dir: dir.to_path_buf(),
            socket,
            peers,
        }
    }

    /// Uids of the clients so far, in order.
    pub fn peers(&self) -> Vec<u32> {
        self.peers.lock().unwrap().clone()
    }

    /// The config mount that shows this daemon at the path `nix` uses inside.
    pub fn mount(&self) -> serde_json::Value {
        serde_json::json!({ "source": self.dir, "target": "/nix/var/nix/daemon-socket" })
    }
}

fn serve(mut conn: UnixStream, behaviour: Behaviour) {
    let (minor, trust) = match behaviour {
        Behaviour::HangUp => return,
        Behaviour::Silent => {
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink);
            return;
        }
        Behaviour::Greet { minor, trust } => (minor, trust),
    };
    let read = |mut conn: &UnixStream| -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        conn.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    };
    let Ok(0x6e69_7863) = read(&conn) else { return };
    let mut reply: Vec<u8> = Vec::new();
    reply.extend(0x6478_696f_u64.to_le_bytes());
    reply.extend(((1u64 << 8) | minor).to_le_bytes());
    if conn.write_all(&reply).is_err() {
        return;
    }
    let Ok(client) = read(&conn) else { return };
    let agreed = (client & 0xff).min(minor);
    if agreed >= 14 && !matches!(read(&conn), Ok(0)) {
        return;
    }
    if agreed >= 11 && read(&conn).is_err() {
        return;
    }
    let mut reply: Vec<u8> = Vec::new();
    if agreed >= 33 {
        let version = b"2.99.0-fake";
        reply.extend((version.len() as u64).to_le_bytes());
        reply.extend(version);
        reply.resize(reply.len().div_ceil(8) * 8, 0);
    }
    if agreed >= 35 {
        reply.extend(trust.to_le_bytes());
    }
    // STDERR_LAST: the end of the daemon's start-up messages.
    reply.extend(0x616c_7473_u64.to_le_bytes());
    let _ = conn.write_all(&reply);
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink);
}
