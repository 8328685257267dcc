//! Writing a new private key file for `smtp-relay dkim keygen`: created new (never over an
//! existing key), mode 0600 from the start, optionally handed to the relay's user.

use std::ffi::CString;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::Context as _;

/// Writes `pem` to `path` (0600); `owner` (a user name) becomes its owner and group.
pub fn write(path: &Path, pem: &str, owner: Option<&str>) -> anyhow::Result<()> {
    let ids = owner.map(user_ids).transpose()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never replaced)",
                path.display()
            )
        })?;
    let written = (|| {
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .context("changing the owner (needs root)")?;
        }
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        anyhow::Ok(())
    })();
    if let Err(e) = written {
        // No half-written key left behind to be mistaken for a good one.
        let _ = std::fs::remove_file(path);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The uid and primary gid of `user`.
fn user_ids(user: &str) -> anyhow::Result<(u32, u32)> {
    let name = CString::new(user).context("user name with a NUL byte")?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s strings,
    // and we read only the numeric ids.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "looking up user {user}: {}",
        std::io::Error::from_raw_os_error(rc)
    );
    anyhow::ensure!(!result.is_null(), "no such user: {user}");
    Ok((pwd.pw_uid, pwd.pw_gid))
}
