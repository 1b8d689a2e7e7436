//! Claude Code managed settings: choose the file, copy it root-owned into the session and
//! make the copy immutable. The sandbox sees it read-only at [`INSIDE_PATH`].

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use crate::config::ManagedSettings;
use crate::identity::Identity;
use crate::session::Session;

/// Where Claude Code reads managed settings on Linux.
pub const INSIDE_PATH: &str = "/etc/claude-code/managed-settings.json";

/// Largest settings file accepted; a real one is a few kilobytes.
const MAX_SIZE: u64 = 1 << 20;

/// Which file the session uses, and its contents.
#[derive(Debug)]
pub struct Chosen {
    pub source: PathBuf,
    pub contents: Vec<u8>,
}

/// The user's custom file when present (read as the user), else the default.
pub fn choose(settings: &ManagedSettings, identity: &Identity) -> Result<Chosen> {
    if let Some(home) = &identity.host_home {
        let custom = home.join(&settings.custom);
        let read = identity.run_as(|| {
            match open(
                &custom,
                OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
                Mode::empty(),
            ) {
                Ok(fd) => {
                    let mut f = std::fs::File::from(fd);
                    let md = f.metadata()?;
                    if !md.is_file() {
                        bail!(
                            "custom managed settings {} is not a regular file",
                            custom.display()
                        );
                    }
                    let mut contents = Vec::new();
                    f.by_ref().take(MAX_SIZE + 1).read_to_end(&mut contents)?;
                    Ok(Some(contents))
                }
                Err(Errno::ENOENT) => Ok(None),
                Err(e) => Err(anyhow::anyhow!(
                    "cannot read custom managed settings {}: {e}",
                    custom.display()
                )),
            }
        })?;
        if let Some(contents) = read {
            validate(&contents)
                .with_context(|| format!("custom managed settings {}", custom.display()))?;
            return Ok(Chosen {
                source: custom,
                contents,
            });
        }
    }
    let contents = std::fs::read(&settings.default).with_context(|| {
        format!(
            "cannot read managed settings {}",
            settings.default.display()
        )
    })?;
    validate(&contents)
        .with_context(|| format!("managed settings {}", settings.default.display()))?;
    Ok(Chosen {
        source: settings.default.clone(),
        contents,
    })
}

fn validate(contents: &[u8]) -> Result<()> {
    if contents.len() as u64 > MAX_SIZE {
        bail!("is larger than {MAX_SIZE} bytes");
    }
    // Report only the position of a syntax error, never the contents.
    let value: serde_json::Value = serde_json::from_slice(contents).map_err(|e| {
        anyhow::anyhow!(
            "is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        )
    })?;
    if !value.is_object() {
        bail!("must be a JSON object");
    }
    Ok(())
}

/// Copy the chosen settings into the session, root-owned and immutable.
pub fn install(session: &mut Session, chosen: &Chosen) -> Result<PathBuf> {
    let path = session.write_file("managed-settings.json", &chosen.contents)?;
    session.make_immutable(&path)?;
    Ok(path)
}
