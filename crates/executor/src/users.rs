//! `user[:group]` to numeric ids, from an image's `/etc/passwd` and `/etc/group`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// One `name:x:id:...` line's name and id (field 3 for both passwd and group), plus the
/// primary group (field 4) for passwd.
fn lookup(db: Option<&[u8]>, name: &str) -> Option<(u32, Option<u32>)> {
    let text = String::from_utf8_lossy(db?);
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || f[0] != name {
            return None;
        }
        let id = f[2].parse().ok()?;
        Some((id, f.get(3).and_then(|g| g.parse().ok())))
    })
}

/// How a missing primary group is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupDefault {
    /// `COPY --chown=user`, `WORKDIR` (BuildKit's file operations): a user name takes its
    /// primary group from `/etc/passwd`, a numeric uid is also the gid.
    Chown,
    /// `USER user` for RUN: the user's primary group from `/etc/passwd` (0 if unknown).
    Primary,
}

/// Resolves `user[:group]`; names need the image's passwd/group content.
pub fn resolve(spec: &str, passwd: Option<&[u8]>, group: Option<&[u8]>, default: GroupDefault) -> Result<Ids, String> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("`{spec}`: empty user"));
    }
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) if default == GroupDefault::Chown => (n, Some(n)),
        Ok(n) => (n, lookup_by_uid(passwd, n)),
        Err(_) => {
            let (uid, primary) = lookup(passwd, user)
                .ok_or_else(|| format!("user `{user}` is not in the image's /etc/passwd (use a numeric id)"))?;
            (uid, primary)
        }
    };
    let gid = match grp {
        Some("") => return Err(format!("`{spec}`: empty group")),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(group, g)
                .map(|(id, _)| id)
                .ok_or_else(|| format!("group `{g}` is not in the image's /etc/group (use a numeric id)"))?,
        },
        None => primary.unwrap_or(0),
    };
    Ok(Ids { uid, gid })
}

/// Supplementary groups of `user` (a name or uid) from /etc/group, plus its primary group, as
/// Docker sets them for RUN.
pub fn supplementary_groups(user: &str, primary: u32, passwd: Option<&[u8]>, group: Option<&[u8]>) -> Vec<u32> {
    let name = match user.split(':').next().unwrap_or(user) {
        n if n.parse::<u32>().is_ok() => name_of_uid(passwd, n.parse().unwrap_or(0)),
        n => Some(n.to_string()),
    };
    let mut out = vec![primary];
    if let (Some(name), Some(db)) = (name, group) {
        for l in String::from_utf8_lossy(db).lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(gid) = f[2].parse()
                && !out.contains(&gid)
            {
                out.push(gid);
            }
        }
    }
    out
}

/// The home directory of `uid` from /etc/passwd (`/root` for root, `/` if unknown).
pub fn home(uid: u32, passwd: Option<&[u8]>) -> String {
    let found = passwd.and_then(|db| {
        String::from_utf8_lossy(db).lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
    });
    found.unwrap_or_else(|| if uid == 0 { "/root".into() } else { "/".into() })
}

fn name_of_uid(passwd: Option<&[u8]>, uid: u32) -> Option<String> {
    String::from_utf8_lossy(passwd?).lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[0].to_string())
    })
}

fn lookup_by_uid(passwd: Option<&[u8]>, uid: u32) -> Option<u32> {
    let text = String::from_utf8_lossy(passwd?);
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\ncnb:x:1000:1001::/home/cnb:/bin/sh\n";
    const GROUP: &[u8] = b"root:x:0:\ncnb:x:1001:\nstaff:x:50:cnb\n";

    #[test]
    fn resolution_rules() {
        let r = |s, d| resolve(s, Some(PASSWD), Some(GROUP), d);
        assert_eq!(r("1000", GroupDefault::Chown), Ok(Ids { uid: 1000, gid: 1000 }));
        assert_eq!(r("4242", GroupDefault::Chown), Ok(Ids { uid: 4242, gid: 4242 }));
        assert_eq!(r("1000", GroupDefault::Primary), Ok(Ids { uid: 1000, gid: 1001 }));
        assert_eq!(r("cnb", GroupDefault::Chown), Ok(Ids { uid: 1000, gid: 1001 }), "primary group, not the uid");
        assert_eq!(r("cnb:staff", GroupDefault::Chown), Ok(Ids { uid: 1000, gid: 50 }));
        assert_eq!(r("cnb", GroupDefault::Primary), Ok(Ids { uid: 1000, gid: 1001 }));
        assert_eq!(r("cnb:staff", GroupDefault::Primary), Ok(Ids { uid: 1000, gid: 50 }));
        assert_eq!(r("5:6", GroupDefault::Primary), Ok(Ids { uid: 5, gid: 6 }));
        assert_eq!(r("4242", GroupDefault::Primary), Ok(Ids { uid: 4242, gid: 0 }));
        assert!(r("nobody", GroupDefault::Primary).unwrap_err().contains("/etc/passwd"));
        assert!(r("cnb:nogroup", GroupDefault::Primary).unwrap_err().contains("/etc/group"));
        assert!(resolve("cnb", None, None, GroupDefault::Primary).is_err(), "distroless without passwd");
    }
}
