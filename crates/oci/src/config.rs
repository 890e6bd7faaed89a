//! The image config, kept as JSON and patched in place.
//!
//! Round-tripping through `oci_spec::image::ImageConfiguration` would drop fields it does not
//! know (Docker's `Shell`, `Healthcheck`, `OnBuild`, ...) and its HashMap labels serialize in
//! random order; we edit a `serde_json::Value` instead and serialize with sorted keys, so the
//! same edits always give the same bytes and digest.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use crate::digest::Digest;

/// The largest config ext-extend writes: container tools refuse bigger ones (containers/image's
/// `MaxConfigBodySize` and the distribution registry's manifest limit are both 4 MiB).
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct ImageConfig {
    root: Value,
    /// For [`ImageConfig::size_over`]: the canonical length when it was last measured, and
    /// what the edits since then added (each edit counts the JSON it adds minus what it
    /// replaces, plus a byte for a comma, so the sum is an upper bound). A Dockerfile edits
    /// the config once per line; measuring all of it each time made 100,000 lines quadratic.
    measured: Option<usize>,
    added: i64,
    /// Position of each variable in `config.Env` (built on the first `set_env`), so that
    /// setting one is not a scan of all of them.
    env_index: Option<HashMap<String, usize>>,
}

impl PartialEq for ImageConfig {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}

/// The length of `value` serialized as [`ImageConfig::to_canonical_bytes`] does.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("a JSON value always serializes");
    count.0
}

/// The length a string takes as a JSON string.
fn json_str_len(s: &str) -> usize {
    json_len(&Value::String(s.to_string()))
}

/// Upper bound of what inserting a member `"key":value` into an object adds; a new object
/// around it (`"config":{}` and the like) is the constant.
fn member_len(key: &str, value: &Value) -> i64 {
    (json_str_len(key) + 2 + json_len(value) + 32) as i64
}

/// One history entry to append.
#[derive(Debug, Clone, Default)]
pub struct HistoryEntry {
    pub created_by: String,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Parses a config and checks it against the OCI image config schema (the fields
    /// ext-extend reads or writes must have their schema types: a config with
    /// `diff_ids[0] = 42` or `Env = "x"` is refused here rather than passed through).
    pub fn from_slice(bytes: &[u8]) -> Result<ImageConfig, String> {
        let root: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        validate(&root)?;
        Ok(ImageConfig { root, measured: None, added: 0, env_index: None })
    }

    /// An empty config for `os/arch`, as for a `FROM scratch` image.
    pub fn empty(os: &str, architecture: &str) -> ImageConfig {
        ImageConfig {
            measured: None,
            added: 0,
            env_index: None,
            root: json!({
                "architecture": architecture,
                "os": os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
        }
    }

    /// Canonical bytes: sorted keys, no whitespace. Relies on serde_json's default map (sorted);
    /// `tests::serialization_sorts_keys` fails if something enables `preserve_order`.
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.root).expect("a JSON value always serializes")
    }

    /// The length of [`ImageConfig::to_canonical_bytes`], without keeping the bytes.
    pub fn canonical_len(&self) -> usize {
        json_len(&self.root)
    }

    /// The canonical length, if it is more than `limit`. Measured only when the edits since
    /// the last measurement could have passed the limit, so checking after every edit costs
    /// time linear in what the edits add, not in the size of the config.
    pub fn size_over(&mut self, limit: usize) -> Option<usize> {
        if let Some(measured) = self.measured
            && measured as i64 + self.added <= limit as i64
        {
            return None;
        }
        let len = self.canonical_len();
        self.measured = Some(len);
        self.added = 0;
        (len > limit).then_some(len)
    }

    pub fn as_json(&self) -> &Value {
        &self.root
    }

    fn top(&mut self) -> &mut Map<String, Value> {
        self.root.as_object_mut().expect("checked in from_slice")
    }

    fn container(&self) -> Option<&Map<String, Value>> {
        self.root.get("config").and_then(Value::as_object)
    }

    fn container_mut(&mut self) -> &mut Map<String, Value> {
        let top = self.top();
        if !top.get("config").is_some_and(Value::is_object) {
            top.insert("config".into(), Value::Object(Map::new()));
        }
        top.get_mut("config").and_then(Value::as_object_mut).expect("just inserted")
    }

    fn str_field(&self, name: &str) -> Option<&str> {
        self.container()?.get(name)?.as_str()
    }

    fn strings_field(&self, name: &str) -> Option<Vec<String>> {
        let arr = self.container()?.get(name)?.as_array()?;
        Some(arr.iter().filter_map(|v| v.as_str().map(String::from)).collect())
    }

    /// Sets `config.<name>`; `Value::Null` removes it.
    pub fn set_field(&mut self, name: &str, value: Value) {
        if name == "Env" {
            self.env_index = None;
        }
        let added = if value.is_null() { 0 } else { member_len(name, &value) };
        let c = self.container_mut();
        let old = if value.is_null() { c.remove(name) } else { c.insert(name.into(), value) };
        self.added += added - old.map_or(0, |v| member_len(name, &v) - 32);
    }

    pub fn os(&self) -> &str {
        self.root.get("os").and_then(Value::as_str).unwrap_or("linux")
    }

    pub fn architecture(&self) -> &str {
        self.root.get("architecture").and_then(Value::as_str).unwrap_or("")
    }

    pub fn variant(&self) -> Option<&str> {
        self.root.get("variant").and_then(Value::as_str)
    }

    /// `config.Env` as ordered pairs.
    pub fn env(&self) -> Vec<(String, String)> {
        self.strings_field("Env")
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect()
    }

    /// Sets one variable, replacing it where it stands or appending it.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let entry = Value::String(format!("{key}={value}"));
        let entry_len = json_len(&entry) as i64;
        if !self.container().and_then(|c| c.get("Env")).is_some_and(Value::is_array) {
            self.set_field("Env", json!([]));
        }
        let mut index = match self.env_index.take() {
            Some(index) => index,
            None => {
                let mut index = HashMap::new();
                for (i, (k, _)) in self.env().into_iter().enumerate() {
                    index.entry(k).or_insert(i);
                }
                index
            }
        };
        let list = self.container_mut().get_mut("Env").and_then(Value::as_array_mut).expect("made an array above");
        let old = match index.get(key) {
            Some(&i) => std::mem::replace(&mut list[i], entry),
            None => {
                index.insert(key.to_string(), list.len());
                list.push(entry);
                Value::Null
            }
        };
        self.added += entry_len + 1 - if old.is_null() { 0 } else { json_len(&old) as i64 + 1 };
        self.env_index = Some(index);
    }

    pub fn user(&self) -> &str {
        self.str_field("User").unwrap_or("")
    }

    pub fn set_user(&mut self, user: &str) {
        self.set_field("User", Value::String(user.into()));
    }

    pub fn working_dir(&self) -> &str {
        self.str_field("WorkingDir").unwrap_or("")
    }

    pub fn set_working_dir(&mut self, dir: &str) {
        self.set_field("WorkingDir", Value::String(dir.into()));
    }

    /// Docker's `Shell` (default `["/bin/sh", "-c"]` when unset).
    pub fn shell(&self) -> Vec<String> {
        self.strings_field("Shell").filter(|s| !s.is_empty()).unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// Whether the config sets a SHELL of its own (else RUN uses `/bin/sh -c`).
    pub fn has_shell(&self) -> bool {
        self.strings_field("Shell").is_some_and(|s| !s.is_empty())
    }

    pub fn set_shell(&mut self, shell: &[String]) {
        self.set_field("Shell", json!(shell));
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.container()
            .and_then(|c| c.get("Labels"))
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    }

    pub fn set_label(&mut self, key: &str, value: &str) {
        self.added += member_len(key, &Value::String(value.into()));
        let c = self.container_mut();
        if !c.get("Labels").is_some_and(Value::is_object) {
            c.insert("Labels".into(), Value::Object(Map::new()));
        }
        c.get_mut("Labels")
            .and_then(Value::as_object_mut)
            .expect("just inserted")
            .insert(key.into(), Value::String(value.into()));
    }

    /// Adds keys to an object-valued field such as `ExposedPorts` or `Volumes`.
    pub fn add_to_set(&mut self, field: &str, keys: &[String]) {
        let c = self.container_mut();
        if !c.get(field).is_some_and(Value::is_object) {
            c.insert(field.into(), Value::Object(Map::new()));
        }
        let set = c.get_mut(field).and_then(Value::as_object_mut).expect("just inserted");
        for k in keys {
            set.insert(k.clone(), json!({}));
        }
        self.added += keys.iter().map(|k| member_len(k, &json!({}))).sum::<i64>();
    }

    /// Appends to `config.OnBuild`.
    pub fn push_onbuild(&mut self, trigger: &str) {
        if !self.container().and_then(|c| c.get("OnBuild")).is_some_and(Value::is_array) {
            self.set_field("OnBuild", json!([]));
        }
        self.added += json_str_len(trigger) as i64 + 1;
        let list = self.container_mut().get_mut("OnBuild").and_then(Value::as_array_mut).expect("made an array above");
        list.push(Value::String(trigger.into()));
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.root
            .pointer("/rootfs/diff_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    pub fn history(&self) -> Vec<Value> {
        self.root.get("history").and_then(Value::as_array).cloned().unwrap_or_default()
    }

    pub fn set_history(&mut self, history: Vec<Value>) {
        let history = Value::Array(history);
        self.added += member_len("history", &history);
        self.top().insert("history".into(), history);
    }

    /// Records a new layer: its diffID joins `rootfs.diff_ids`, and a history entry is added.
    pub fn push_layer(&mut self, diff_id: &Digest, created: &str, entry: HistoryEntry) {
        self.added += json_str_len(diff_id.as_str()) as i64 + 64;
        let top = self.top();
        if !top.get("rootfs").is_some_and(Value::is_object) {
            top.insert("rootfs".into(), json!({"type": "layers", "diff_ids": []}));
        }
        let rootfs = top.get_mut("rootfs").and_then(Value::as_object_mut).expect("just inserted");
        if !rootfs.get("diff_ids").is_some_and(Value::is_array) {
            rootfs.insert("diff_ids".into(), json!([]));
        }
        rootfs
            .get_mut("diff_ids")
            .and_then(Value::as_array_mut)
            .expect("just inserted")
            .push(Value::String(diff_id.to_string()));
        self.push_history(created, HistoryEntry { empty_layer: false, ..entry });
    }

    /// Adds a history entry (`empty_layer` ones record config-only instructions).
    pub fn push_history(&mut self, created: &str, entry: HistoryEntry) {
        let mut h = Map::new();
        h.insert("created".into(), Value::String(created.into()));
        h.insert("created_by".into(), Value::String(entry.created_by));
        if let Some(c) = entry.comment {
            h.insert("comment".into(), Value::String(c));
        }
        if entry.empty_layer {
            h.insert("empty_layer".into(), Value::Bool(true));
        }
        let h = Value::Object(h);
        self.added += json_len(&h) as i64 + 32;
        let top = self.top();
        if !top.get("history").is_some_and(Value::is_array) {
            top.insert("history".into(), json!([]));
        }
        top.get_mut("history").and_then(Value::as_array_mut).expect("just inserted").push(h);
    }

    pub fn set_author(&mut self, author: &str) {
        self.added += member_len("author", &Value::String(author.into()));
        self.top().insert("author".into(), Value::String(author.into()));
    }

    pub fn set_created(&mut self, created: &str) {
        self.added += member_len("created", &Value::String(created.into()));
        self.top().insert("created".into(), Value::String(created.into()));
    }
}

/// The schema checks of [`ImageConfig::from_slice`]; the error names the offending field.
fn validate(root: &Value) -> Result<(), String> {
    let top = root.as_object().ok_or("the image config is not a JSON object")?;
    let is_str = |v: &Value| v.is_string();
    let strings = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    let object_of = |v: &Value, f: &dyn Fn(&Value) -> bool| v.as_object().is_some_and(|m| m.values().all(f));
    let check = |field: &str, v: Option<&Value>, ok: bool, want: &str| -> Result<(), String> {
        match v {
            Some(v) if !ok => Err(format!("`{field}` must be {want}, not {}", kind(v))),
            _ => Ok(()),
        }
    };
    for field in ["architecture", "os"] {
        match top.get(field) {
            None => return Err(format!("`{field}` is missing")),
            Some(v) => check(field, Some(v), v.is_string(), "a string")?,
        }
    }
    for field in ["variant", "created", "author", "os.version"] {
        check(field, top.get(field), top.get(field).is_some_and(is_str), "a string")?;
    }
    let rootfs = top.get("rootfs").ok_or("`rootfs` is missing")?;
    let rootfs = rootfs.as_object().ok_or_else(|| format!("`rootfs` must be an object, not {}", kind(rootfs)))?;
    match rootfs.get("type") {
        Some(Value::String(t)) if t == "layers" => {}
        other => return Err(format!("`rootfs.type` must be \"layers\", not {}", other.map_or("missing".into(), kind))),
    }
    let diff_ids = rootfs.get("diff_ids").ok_or("`rootfs.diff_ids` is missing")?;
    let diff_ids =
        diff_ids.as_array().ok_or_else(|| format!("`rootfs.diff_ids` must be an array, not {}", kind(diff_ids)))?;
    for (i, d) in diff_ids.iter().enumerate() {
        match d.as_str().map(str::parse::<Digest>) {
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err(format!("`rootfs.diff_ids[{i}]` is not a sha256 digest: {d}")),
            None => return Err(format!("`rootfs.diff_ids[{i}]` must be a digest string, not {}", kind(d))),
        }
    }
    if let Some(history) = top.get("history") {
        let list = history.as_array().ok_or_else(|| format!("`history` must be an array, not {}", kind(history)))?;
        for (i, h) in list.iter().enumerate() {
            let h = h.as_object().ok_or_else(|| format!("`history[{i}]` must be an object, not {}", kind(h)))?;
            for field in ["created", "created_by", "author", "comment"] {
                let v = h.get(field).filter(|v| !v.is_null());
                check(&format!("history[{i}].{field}"), v, v.is_some_and(is_str), "a string")?;
            }
            let v = h.get("empty_layer");
            check(&format!("history[{i}].empty_layer"), v, v.is_some_and(Value::is_boolean), "a boolean")?;
        }
    }
    let Some(config) = top.get("config").filter(|c| !c.is_null()) else { return Ok(()) };
    let config = config.as_object().ok_or_else(|| format!("`config` must be an object, not {}", kind(config)))?;
    for (field, v) in config {
        if v.is_null() {
            continue;
        }
        let (ok, want) = match field.as_str() {
            "User" | "WorkingDir" | "StopSignal" => (v.is_string(), "a string"),
            "Env" | "Entrypoint" | "Cmd" | "Shell" | "OnBuild" => (strings(v), "an array of strings"),
            "Labels" => (object_of(v, &is_str), "an object of strings"),
            "ExposedPorts" | "Volumes" => (v.is_object(), "an object"),
            _ => (true, ""),
        };
        check(&format!("config.{field}"), Some(v), ok, want)?;
    }
    Ok(())
}

/// A JSON value's type, for schema errors.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin","A=1"],"Shell":["/bin/bash","-c"],"Healthcheck":{"Test":["NONE"]},"OnBuild":null,"ArgsEscaped":true},"container_config":{"Hostname":"x"},"docker_version":"24.0","rootfs":{"type":"layers","diff_ids":["sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"]},"history":[{"created_by":"x"}]}"#;

    #[test]
    fn schema_violations_are_refused_naming_the_field() {
        let base: Value = serde_json::from_str(DOCKER_CONFIG).unwrap();
        let cases: &[(&str, Value, &str)] = &[
            ("/rootfs/diff_ids/0", json!(42), "`rootfs.diff_ids[0]` must be a digest string, not the number 42"),
            ("/rootfs/diff_ids/0", json!("sha256:zz"), "`rootfs.diff_ids[0]` is not a sha256 digest"),
            ("/rootfs/diff_ids", json!({}), "`rootfs.diff_ids` must be an array"),
            ("/rootfs/type", json!("tarball"), "`rootfs.type` must be \"layers\""),
            ("/rootfs", json!([]), "`rootfs` must be an object"),
            ("/os", json!(7), "`os` must be a string"),
            ("/config/Env", json!("PATH=/bin"), "`config.Env` must be an array of strings"),
            ("/config/Env/0", json!(1), "`config.Env` must be an array of strings"),
            ("/config/User", json!(0), "`config.User` must be a string"),
            ("/config/Labels", json!({"a": 1}), "`config.Labels` must be an object of strings"),
            ("/config/ExposedPorts", json!(["80/tcp"]), "`config.ExposedPorts` must be an object"),
            ("/config", json!("x"), "`config` must be an object"),
            ("/history/0/empty_layer", json!("yes"), "`history[0].empty_layer` must be a boolean"),
            ("/history/0/created_by", json!(["x"]), "`history[0].created_by` must be a string"),
            ("/history", json!({}), "`history` must be an array"),
        ];
        for (pointer, value, want) in cases {
            let mut v = base.clone();
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            match v.pointer_mut(parent).unwrap_or_else(|| panic!("{pointer}")) {
                Value::Object(m) => {
                    m.insert(key.into(), value.clone());
                }
                Value::Array(a) => a[key.parse::<usize>().unwrap()] = value.clone(),
                _ => panic!("{pointer}"),
            }
            let err = ImageConfig::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(err.contains(want), "{pointer} = {value}: {err}");
        }
        for field in ["os", "architecture", "rootfs"] {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(field);
            let err = ImageConfig::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(err.contains(&format!("`{field}` is missing")), "{err}");
        }
        // Nulls where Docker writes them are fine, and so are unknown fields.
        let mut v = base.clone();
        v["config"]["Cmd"] = Value::Null;
        v["config"]["Labels"] = Value::Null;
        v["config"]["Whatever"] = json!([1, {"x": 2}]);
        ImageConfig::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[test]
    fn unknown_fields_survive_edits() {
        let mut c = ImageConfig::from_slice(DOCKER_CONFIG.as_bytes()).unwrap();
        c.set_env("A", "2");
        c.set_env("B", "3");
        c.set_label("z", "1");
        c.set_label("a", "2");
        let v: Value = serde_json::from_slice(&c.to_canonical_bytes()).unwrap();
        assert_eq!(v["container_config"]["Hostname"], "x");
        assert_eq!(v["docker_version"], "24.0");
        assert_eq!(v["config"]["Healthcheck"]["Test"][0], "NONE");
        assert_eq!(v["config"]["ArgsEscaped"], true);
        assert_eq!(v["config"]["Env"], json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(c.shell(), vec!["/bin/bash", "-c"]);
    }

    #[test]
    fn serialization_sorts_keys() {
        let mut c = ImageConfig::empty("linux", "amd64");
        for k in ["zeta", "alpha", "mid"] {
            c.set_label(k, "v");
        }
        let s = String::from_utf8(c.to_canonical_bytes()).unwrap();
        let (a, m, z) = (s.find("alpha").unwrap(), s.find("mid").unwrap(), s.find("zeta").unwrap());
        assert!(a < m && m < z, "labels not sorted: {s}");
        assert!(s.find("\"architecture\"").unwrap() < s.find("\"rootfs\"").unwrap());
        // Same edits, same bytes.
        let mut d = ImageConfig::empty("linux", "amd64");
        for k in ["mid", "zeta", "alpha"] {
            d.set_label(k, "v");
        }
        assert_eq!(c.to_canonical_bytes(), d.to_canonical_bytes());
    }

    #[test]
    fn layers_and_history_stay_consistent() {
        let mut c = ImageConfig::empty("linux", "amd64");
        let d = Digest::of(b"layer");
        c.push_history("t", HistoryEntry { created_by: "ENV a=b".into(), empty_layer: true, ..Default::default() });
        c.push_layer(&d, "t", HistoryEntry { created_by: "COPY a /".into(), ..Default::default() });
        assert_eq!(c.diff_ids(), vec![d.to_string()]);
        let h = c.history();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0]["empty_layer"], true);
        assert!(h[1].get("empty_layer").is_none());
    }

    /// The size check is an upper bound kept per edit, measured only near the limit: it
    /// agrees with the real length whenever it says "over", and never misses a config over it.
    #[test]
    fn size_over_agrees_with_the_canonical_length() {
        let mut c = ImageConfig::from_slice(DOCKER_CONFIG.as_bytes()).unwrap();
        let limit = 20_000;
        let mut over_at = None;
        for i in 0..2_000 {
            match i % 5 {
                0 => c.set_env("A", &"x".repeat(i % 50)),
                1 => c.set_env(&format!("K{i}"), "\u{1}\"q"),
                2 => c.set_label(&format!("l{}", i % 7), &"y".repeat(i % 30)),
                3 => c.set_field("Cmd", json!(["sh", "-c", "z".repeat(i % 40)])),
                _ => c.push_history("t", HistoryEntry { created_by: format!("ENV {i}"), ..Default::default() }),
            }
            let real = c.canonical_len();
            match c.size_over(limit) {
                Some(size) => {
                    assert_eq!(size, real);
                    over_at = Some(i);
                    break;
                }
                None => assert!(real <= limit, "step {i}: {real} bytes not caught"),
            }
        }
        assert!(over_at.is_some(), "the config grows past the limit");
        // Variables keep their place and the first of a duplicated name is the one set.
        assert_eq!(c.env()[0].0, "PATH");
        assert_eq!(c.env().iter().filter(|(k, _)| k == "A").count(), 1);
    }
}
