//! The relay's own keys and its link, kept in the data directory.

use std::{
    fs,
    path::{Path, PathBuf},
};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use tamizdat_transport::tls::RelayCert;
use tamizdat_wire::proto::RelayDescriptor;

use crate::RelayError;

const META: &str = "relay.json";
const CERT: &str = "tls-cert.der";
const KEY: &str = "tls-key.der";

#[derive(Serialize, Deserialize)]
struct Meta {
    version: u32,
    door: String,
    public: Vec<String>,
}

/// A relay's certificate, door key and advertised endpoints.
pub struct RelayIdentity {
    /// TLS certificate and key.
    pub cert: RelayCert,
    /// Secret that opens the protocol path.
    pub door: Vec<u8>,
    /// Endpoints in the relay link, `IP:PORT` literals first.
    pub public: Vec<String>,
    dir: PathBuf,
}

fn dir_err(dir: &Path, reason: impl ToString) -> RelayError {
    RelayError::DataDir { path: dir.display().to_string(), reason: reason.to_string() }
}

impl RelayIdentity {
    /// Loads the identity, or `None` if the directory has none yet.
    pub fn load(dir: &Path) -> Result<Option<Self>, RelayError> {
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Ok(None);
        }
        let meta: Meta = serde_json::from_slice(&fs::read(&meta_path).map_err(|e| dir_err(dir, e))?)
            .map_err(|e| dir_err(dir, format!("{META} is damaged: {e}")))?;
        let door = hex::decode(&meta.door).map_err(|_| dir_err(dir, format!("{META} has a damaged door key")))?;
        let cert = RelayCert {
            cert_der: fs::read(dir.join(CERT)).map_err(|e| dir_err(dir, format!("{CERT}: {e}")))?,
            key_der: fs::read(dir.join(KEY)).map_err(|e| dir_err(dir, format!("{KEY}: {e}")))?,
        };
        Ok(Some(Self { cert, door, public: meta.public, dir: dir.to_path_buf() }))
    }

    /// Creates a new identity in `dir` (created if missing).
    pub fn create(dir: &Path, public: Vec<String>) -> Result<Self, RelayError> {
        fs::create_dir_all(dir).map_err(|e| dir_err(dir, e))?;
        let names: Vec<String> = public.iter().filter_map(|e| host_of(e)).collect();
        let cert = RelayCert::generate(if names.is_empty() { vec!["localhost".into()] } else { names })?;
        let mut door = vec![0u8; tamizdat_wire::limits::ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut door);
        write_private(&dir.join(KEY), &cert.key_der).map_err(|e| dir_err(dir, e))?;
        fs::write(dir.join(CERT), &cert.cert_der).map_err(|e| dir_err(dir, e))?;
        let id = Self { cert, door, public, dir: dir.to_path_buf() };
        id.save()?;
        Ok(id)
    }

    /// Loads the identity in `dir`, replacing its endpoints with `public` if any are given, or
    /// creates one advertising `public` (or `default_public` when that is empty).
    pub fn load_or_create(dir: &Path, public: &[String], default_public: &str) -> Result<Self, RelayError> {
        match Self::load(dir)? {
            Some(mut id) => {
                if !public.is_empty() && public != id.public.as_slice() {
                    id.set_public(public.to_vec())?;
                }
                Ok(id)
            }
            None if public.is_empty() => Self::create(dir, vec![default_public.to_string()]),
            None => Self::create(dir, public.to_vec()),
        }
    }

    /// Replaces the advertised endpoints.
    pub fn set_public(&mut self, public: Vec<String>) -> Result<(), RelayError> {
        self.public = public;
        self.save()
    }

    fn save(&self) -> Result<(), RelayError> {
        let meta = Meta { version: 1, door: hex::encode(&self.door), public: self.public.clone() };
        let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| dir_err(&self.dir, e))?;
        write_private(&self.dir.join(META), &bytes).map_err(|e| dir_err(&self.dir, e))
    }

    /// The descriptor clients put in their links.
    pub fn descriptor(&self) -> RelayDescriptor {
        RelayDescriptor { endpoints: self.public.clone(), cert_sha256: self.cert.pin(), door: self.door.clone() }
    }

    /// The relay link.
    pub fn link(&self) -> String {
        self.descriptor().to_link()
    }
}

fn host_of(endpoint: &str) -> Option<String> {
    let (host, _) = endpoint.rsplit_once(':')?;
    Some(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Writes a file readable only by its owner.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(tmp, path)
}
