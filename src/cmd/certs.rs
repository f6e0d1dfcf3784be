//! `tickmesh certs init` and `tickmesh certs issue REGION`: the mesh's private CA.

use anyhow::{bail, Context};
use std::path::Path;
use tickmesh_replicate::tls::{self, CaPem};

fn write_new(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} already exists; move it away first (tickmesh never overwrites keys)", path.display());
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

/// Creates `ca.pem` and `ca.key` in `dir`.
pub fn init(dir: &Path, name: &str) -> anyhow::Result<()> {
    let ca = tls::generate_ca(name)?;
    write_new(&dir.join("ca.pem"), &ca.cert, false)?;
    write_new(&dir.join("ca.key"), &ca.key, true)?;
    println!("wrote {} and {} (keep ca.key offline)", dir.join("ca.pem").display(), dir.join("ca.key").display());
    Ok(())
}

/// Issues `<region>.pem` and `<region>.key` in `dir`, signed by the CA there.
pub fn issue(dir: &Path, region: &str, days: u32) -> anyhow::Result<()> {
    if region.is_empty() || !region.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
        bail!("region '{region}' is not a valid region name; use lowercase letters, digits and '-', e.g. us-east-1");
    }
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f)).with_context(|| {
            format!("reading {}; run `tickmesh certs init --dir {}` first", dir.join(f).display(), dir.display())
        })
    };
    let ca = CaPem { cert: read("ca.pem")?, key: read("ca.key")? };
    let leaf = tls::issue(&ca, region, days)?;
    write_new(&dir.join(format!("{region}.pem")), &leaf.cert, false)?;
    write_new(&dir.join(format!("{region}.key")), &leaf.key, true)?;
    println!("wrote {0}/{region}.pem and {0}/{region}.key, valid {days} days", dir.display());
    Ok(())
}
