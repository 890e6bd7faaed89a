//! Table tests of the front end: parsing, validation errors (with file and line), and the
//! expansion rules of a plan.

use std::collections::BTreeMap;

use ext_dockerfile::{ConfigOp, CopySource, Dockerfile, DockerfileError, Op, RunCommand};

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn plan_ops(text: &str, build_args: &[(&str, &str)], env: &[(&str, &str)]) -> Vec<Op> {
    let df = Dockerfile::parse(text, "run.Dockerfile").unwrap_or_else(|e| panic!("{e}"));
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    df.plan(&args(build_args), &env).unwrap_or_else(|e| panic!("{e}")).steps.into_iter().map(|s| s.op).collect()
}

fn err(text: &str, build_args: &[(&str, &str)]) -> DockerfileError {
    match Dockerfile::parse(text, "run.Dockerfile") {
        Err(e) => e,
        Ok(df) => df.plan(&args(build_args), &[]).expect_err("expected an error"),
    }
}

fn env_op(op: &Op) -> Vec<(String, String)> {
    match op {
        Op::Env(p) => p.clone(),
        other => panic!("not ENV: {other:?}"),
    }
}

#[test]
fn expansion_table() {
    let base = [("base_image", "oci:/x:latest")];
    // (Dockerfile body after FROM, expected ENV pairs of the last instruction)
    type Pairs = &'static [(&'static str, &'static str)];
    let cases: &[(&str, Pairs, Pairs)] = &[
        ("ENV A=plain", &[], &[("A", "plain")]),
        ("ARG V=def\nENV A=$V", &[], &[("A", "def")]),
        ("ARG V=def\nENV A=$V", &[("V", "cli")], &[("A", "cli")]),
        ("ARG V\nENV A=x${V}y", &[], &[("A", "xy")]),
        ("ENV A=${UNSET:-fallback}", &[], &[("A", "fallback")]),
        ("ARG V=set\nENV A=${V:+alt}", &[], &[("A", "alt")]),
        ("ENV A=${UNSET:+alt}", &[], &[("A", "")]),
        ("ENV A=\"two words\" B='$NOT'", &[], &[("A", "two words"), ("B", "$NOT")]),
        ("ENV A=\\$ESCAPED", &[], &[("A", "$ESCAPED")]),
        ("ENV A=${PATH}:/extra", &[], &[("A", "/usr/bin:/extra")]),
        // ENV wins over ARG of the same name.
        ("ARG PATH=/arg\nENV A=$PATH", &[("PATH", "/cli")], &[("A", "/usr/bin")]),
        ("ENV X=1\nARG X=2\nENV A=$X", &[], &[("A", "1")]),
        // Undeclared build args are invisible.
        ("ENV A=${undeclared:-none}", &[("undeclared", "v")], &[("A", "none")]),
        // Legacy form.
        ("ENV GREETING hello big world", &[], &[("GREETING", "hello big world")]),
        // A later ENV sees an earlier one.
        ("ENV A=1\nENV B=${A}2", &[], &[("B", "12")]),
        // Continuations with an inner comment.
        ("ENV A=1 \\\n  # note\n  B=2", &[], &[("A", "1"), ("B", "2")]),
    ];
    for (body, build, expected) in cases {
        let text = format!("FROM ${{base_image}}\n{body}\n");
        let mut all: Vec<(&str, &str)> = base.to_vec();
        all.extend_from_slice(build);
        let ops = plan_ops(&text, &all, &[("PATH", "/usr/bin")]);
        let got = env_op(ops.last().unwrap());
        let want: Vec<(String, String)> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want, "case: {body:?}");
    }
}

#[test]
fn global_args_only_reach_from_unless_redeclared() {
    let text = "ARG base_image\nARG GLOBAL=g\nFROM ${base_image}\nENV A=${GLOBAL:-unset}\nARG GLOBAL\nENV B=$GLOBAL\n";
    let ops = plan_ops(text, &[("base_image", "img")], &[]);
    assert_eq!(env_op(&ops[0]), vec![("A".to_string(), "unset".to_string())]);
    assert_eq!(env_op(&ops[2]), vec![("B".to_string(), "g".to_string())]);
}

#[test]
fn from_resolution() {
    let df = Dockerfile::parse("ARG base_image\nFROM ${base_image}\nUSER 1000\n", "f").unwrap();
    let from = df.resolve_from(&args(&[("base_image", "oci:/img:tag")])).unwrap();
    assert_eq!((from.image.as_str(), from.extends_base, from.line), ("oci:/img:tag", true, 2));

    let df = Dockerfile::parse("FROM other-image\nUSER 1000\n", "f").unwrap();
    let from = df.resolve_from(&args(&[("base_image", "x")])).unwrap();
    assert!(!from.extends_base, "FROM another image switches the run image");

    let df = Dockerfile::parse("ARG B=busybox\nFROM ${B:-x}\n", "f").unwrap();
    assert_eq!(df.resolve_from(&BTreeMap::new()).unwrap().image, "busybox");

    // `# syntax=` is accepted and kept for a debug line; it changes nothing else.
    let df = Dockerfile::parse("# syntax=docker/dockerfile:1.7\nFROM ${base_image}\nUSER 1\n", "f").unwrap();
    assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1.7"));
    assert!(df.syntax_note().unwrap().contains("`# syntax=docker/dockerfile:1.7` is not used"));
    assert_eq!(df.instructions[0].line, 3);
    assert!(Dockerfile::parse("FROM x\n", "f").unwrap().syntax_note().is_none());

    // No FROM at all: `FROM ${base_image}` is implied, line numbers stay the user's.
    let df = Dockerfile::parse("# escape=`\nCOPY a /b\nRUN echo `\n  hi\n", "f").unwrap();
    assert!(df.from.implicit);
    assert_eq!(df.escape, '`');
    assert_eq!(df.instructions[0].line, 2);
    assert_eq!(df.instructions[1].line, 3);
    assert!(df.resolve_from(&args(&[("base_image", "b")])).unwrap().extends_base);
}

#[test]
fn errors_name_file_line_and_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("FROM ${base_image}\nRUN x\nFROM other\n", 3, "multi-stage"),
        ("FROM ${base_image} AS Builder\nCOPY --from=builder /a /b\n", 2, "`COPY --from=builder` names a build stage"),
        ("FROM ${base_image}\nCOPY --from=0 /a /b\n", 2, "multi-stage builds are not allowed"),
        ("FROM ${base_image}\nADD --from=busybox /a /b\n", 2, "ADD does not support the flag `--from`"),
        ("FROM ${base_image}\nARG none\nCOPY --from=${none} /a /b\n", 3, "empty image reference"),
        ("FROM ${base_image}\n\nBOGUS x\n", 3, "unknown instruction"),
        ("FROM ${base_image}\nCOPY --mystery a b\n", 2, "--mystery"),
        (
            "FROM ${base_image}\nRUN --mount=type=cache true\n",
            2,
            "RUN --mount=type=cache: a cache mount needs a target",
        ),
        ("FROM ${base_image}\nRUN --security=insecure true\n", 2, "--security"),
        ("FROM ${base_image}\nRUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/a true\n", 2, "two mounts"),
        ("FROM ${base_image}\nRUN --mount=target=${missing:?must-be-set} true\n", 2, "must-be-set"),
        ("FROM ${base_image}\nENV A=1 B\n", 2, "cannot find `=`"),
        ("FROM ${base_image}\nENV A=\"${B:?must be set}\"\n", 2, "must be set"),
        ("FROM ${base_image}\nENV A=\"unterminated\n", 2, ""),
        ("FROM ${base_image}\nCOPY --chmod=999 a b\n", 2, "octal"),
        ("FROM ${base_image}\nADD --parents a b/\n", 2, "--parents"),
        ("FROM ${base_image}\nCOPY --parents=maybe a b/\n", 2, "expected true or false"),
        ("FROM ${base_image}\nCOPY --exclude a b/\n", 2, "--exclude needs a pattern"),
        ("FROM ${base_image}\nCOPY http://example.com/x /x\n", 2, "use ADD"),
        ("FROM ${base_image}\nUSER ${nobody}\n", 2, "empty user"),
        ("ARG base_image\nFROM ${base_image}\nUSER 1\n", 2, "base_image` is not set"),
        ("COPY a b\nFROM x\n", 2, "FROM must come before"),
        ("FROM ${base_image}\nRUN cat <<EOF > /x\nhi\n", 2, "here-document `<<EOF` has no terminating `EOF` line"),
    ];
    for (text, line, needle) in cases {
        let build: &[(&str, &str)] = if text.contains("is not set") || text.starts_with("ARG base_image") {
            &[]
        } else {
            &[("base_image", "b")]
        };
        let e = err(text, build);
        let msg = e.to_string();
        assert_eq!(e.location().line, *line, "{text:?}: {msg}");
        assert!(msg.starts_with(&format!("run.Dockerfile:{line}:")), "{msg}");
        assert!(msg.contains(needle), "{text:?}: `{msg}` lacks `{needle}`");
    }
    let empty = err("# only a comment\n", &[]);
    assert!(matches!(empty, DockerfileError::Empty { .. }), "{empty}");
}

#[test]
fn multi_stage_error_lists_allowed_set() {
    let msg = err("FROM a\nFROM b\n", &[]).to_string();
    assert!(msg.contains("ADD, ARG, COPY, ENV, LABEL, RUN, SHELL, USER, WORKDIR"), "{msg}");
}

#[test]
fn config_instructions_warn_with_line() {
    let df = Dockerfile::parse(
        "FROM ${base_image}\nCMD [\"/app\"]\nEXPOSE 8080 53/udp\nUSER 1000\nSTOPSIGNAL SIGTERM\n",
        "x",
    )
    .unwrap();
    let lines: Vec<usize> = df.warnings.iter().map(|w| w.at.line).collect();
    assert_eq!(lines, vec![2, 3, 5]);
    assert!(df.warnings[0].to_string().starts_with("x:2: CMD is not one of"));
    let ops: Vec<Op> = df.plan(&args(&[("base_image", "b")]), &[]).unwrap().steps.into_iter().map(|s| s.op).collect();
    assert_eq!(ops[0], Op::Config(ConfigOp::Cmd { args: vec!["/app".into()], prepend_shell: false }));
    assert_eq!(ops[1], Op::Config(ConfigOp::Expose(vec!["8080/tcp".into(), "53/udp".into()])));
}

#[test]
fn run_is_not_expanded_and_gets_args_as_env() {
    let text = "FROM ${base_image}\nARG build_id=0\nARG user_id\nRUN echo ${build_id} \\\n  # comment\n  && echo $user_id\nRUN [\"echo\", \"$HOME\"]\nRUN <<EOF\n#!/bin/sh\necho script\nEOF\n";
    let ops = plan_ops(text, &[("base_image", "b"), ("user_id", "1000"), ("HTTP_PROXY", "http://proxy")], &[]);
    let Op::Run(run) = &ops[2] else { panic!("{:?}", ops[2]) };
    assert_eq!(run.command, RunCommand::Shell("echo ${build_id}   && echo $user_id".into()));
    let env: BTreeMap<_, _> = run.args_env.iter().cloned().collect();
    assert_eq!(env.get("build_id").map(String::as_str), Some("0"));
    assert_eq!(env.get("user_id").map(String::as_str), Some("1000"));
    assert!(!env.contains_key("HTTP_PROXY"), "an undeclared proxy arg is not a declared arg");
    assert_eq!(run.proxy_env, vec![("HTTP_PROXY".to_string(), "http://proxy".to_string())], "proxy args pass through");
    assert!(!env.contains_key("base_image"), "undeclared args stay out");
    let Op::Run(exec) = &ops[3] else { panic!() };
    assert_eq!(exec.command, RunCommand::Exec(vec!["echo".into(), "$HOME".into()]));
    let Op::Run(script) = &ops[4] else { panic!() };
    assert_eq!(script.command, RunCommand::Script("#!/bin/sh\necho script\n".into()));
}

#[test]
fn copy_sources_flags_and_heredocs() {
    let text = "FROM ${base_image}\nARG owner=1000\nCOPY --chown=${owner}:${owner} --chmod=0750 src/*.txt bin /dst/\nCOPY <<EOT /etc/motd\nhello $owner \"quoted\"\nEOT\nCOPY <<'RAW' /raw\n$owner\nRAW\nADD https://example.com/a.tgz /opt/\n";
    let ops = plan_ops(text, &[("base_image", "b")], &[]);
    let Op::Copy(c) = &ops[1] else { panic!() };
    assert_eq!(c.chown.as_deref(), Some("1000:1000"));
    assert_eq!(c.chmod.as_deref(), Some("0750"));
    assert_eq!(c.sources, vec![CopySource::Path("src/*.txt".into()), CopySource::Path("bin".into())]);
    assert_eq!(c.dest, "/dst/");
    let Op::Copy(h) = &ops[2] else { panic!() };
    assert_eq!(h.sources, vec![CopySource::Inline { name: "EOT".into(), content: "hello 1000 \"quoted\"\n".into() }]);
    let Op::Copy(raw) = &ops[3] else { panic!() };
    assert_eq!(raw.sources, vec![CopySource::Inline { name: "RAW".into(), content: "$owner\n".into() }]);
    let Op::Copy(add) = &ops[4] else { panic!() };
    assert!(add.add);
    assert_eq!(add.sources, vec![CopySource::Url("https://example.com/a.tgz".into())]);
    assert!(add.exclude.is_empty() && !add.parents);

    let text = "FROM ${base_image}\nARG ext=md\nCOPY --exclude=*.${ext} --exclude=!keep.md --parents a/./b /d/\nCOPY --parents=false x /y/\n";
    let ops = plan_ops(text, &[("base_image", "b")], &[]);
    let Op::Copy(c) = &ops[1] else { panic!() };
    assert_eq!(c.exclude, ["*.md", "!keep.md"], "repeatable, expanded, in order");
    assert!(c.parents);
    let Op::Copy(c) = &ops[2] else { panic!() };
    assert!(!c.parents);
    assert!(c.from.is_none());

    // --from names an image (expanded like any flag); a stage name other than this FROM's is
    // an image name too, as BuildKit reads it when no stage has that name.
    let text = "FROM ${base_image} AS final\nARG tool=busybox:1.36\nCOPY --from=${tool} /bin/busybox /opt/bb\nCOPY --from=builder /a /b\n";
    let ops = plan_ops(text, &[("base_image", "b")], &[]);
    let Op::Copy(c) = &ops[1] else { panic!() };
    assert_eq!(c.from.as_deref(), Some("busybox:1.36"));
    let Op::Copy(c) = &ops[2] else { panic!() };
    assert_eq!(c.from.as_deref(), Some("builder"));
}

#[test]
fn history_text_joins_continuations() {
    let df = Dockerfile::parse(
        "FROM ${base_image}\nRUN apt-get update \\\n    && apt-get install -y curl\n\n# trailing comment\nUSER 1000\n",
        "f",
    )
    .unwrap();
    assert_eq!(df.instructions[0].text, "RUN apt-get update     && apt-get install -y curl");
    assert_eq!(df.instructions[1].text, "USER 1000");
}

#[test]
fn lowercase_and_healthcheck() {
    let ops = plan_ops(
        "from ${base_image}\nworkdir /app\nhealthcheck --interval=30s --retries=3 CMD curl -f http://localhost/\n",
        &[("base_image", "b")],
        &[],
    );
    assert_eq!(ops[0], Op::Workdir("/app".into()));
    let Op::Config(ConfigOp::Healthcheck(hc)) = &ops[1] else { panic!() };
    assert_eq!(hc.test, vec!["CMD-SHELL", "curl -f http://localhost/"]);
    assert_eq!(hc.interval_ns, Some(30_000_000_000));
    assert_eq!(hc.retries, Some(3));
}

#[test]
fn run_heredocs_as_buildkit_runs_them() {
    let text = "FROM ${base_image}\nRUN <<EOF sh\necho one\nEOF\nRUN python3 <<'PY'\nprint(\"$HOME\")\nPY\nRUN cat <<EOF > /f\nhello\nEOF\nRUN <<A cat > /a && <<-B cat > /b\nfirst\nA\n\tsecond\n\tB\nRUN <<-EOF\n\techo chomped\n\tEOF\nUSER 1000\n";
    let df = Dockerfile::parse(text, "f").unwrap();
    assert_eq!(df.instructions[0].text, "RUN <<EOF sh", "history keeps the marker");
    assert_eq!(df.instructions.last().unwrap().line, 19, "lines after here-documents stay right");
    let ops = plan_ops(text, &[("base_image", "b")], &[]);
    let shell = |i: usize| match &ops[i] {
        Op::Run(r) => r.command.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(shell(0), RunCommand::Shell("<<EOF sh\necho one\nEOF".into()));
    assert_eq!(shell(1), RunCommand::Shell("python3 <<'PY'\nprint(\"$HOME\")\nPY".into()));
    assert_eq!(shell(2), RunCommand::Shell("cat <<EOF > /f\nhello\nEOF".into()));
    assert_eq!(shell(3), RunCommand::Shell("<<A cat > /a && <<-B cat > /b\nfirst\nA\n\tsecond\nB".into()));
    assert_eq!(shell(4), RunCommand::Shell("echo chomped\n".into()), "a lone here-document is the command");
    assert_eq!(ops[5], Op::User("1000".into()));
}

#[test]
fn add_checksum_unpack_and_git_sources() {
    let sum = format!("sha256:{}", "ab".repeat(32));
    let text = format!(
        "FROM ${{base_image}}\nADD --checksum={sum} https://example.com/t.tgz /opt/\nADD --unpack=true https://example.com/a.tgz /u/\nADD --unpack a.tgz /v/\nADD --unpack=false a.tgz /w/\n"
    );
    let ops = plan_ops(&text, &[("base_image", "b")], &[]);
    let Op::Copy(c) = &ops[0] else { panic!() };
    assert_eq!(c.checksum.as_deref(), Some(sum.as_str()));
    assert_eq!(c.unpack, None);
    let unpack: Vec<Option<bool>> = ops[1..]
        .iter()
        .map(|o| match o {
            Op::Copy(c) => c.unpack,
            _ => panic!(),
        })
        .collect();
    assert_eq!(unpack, [Some(true), Some(true), Some(false)]);

    let base = &[("base_image", "b")];
    let e = err(&format!("FROM ${{base_image}}\nADD --checksum={sum} a.txt /x\n"), base).to_string();
    assert!(e.contains(":2:") && e.contains("requires an HTTP(S) source"), "{e}");
    let e = err(&format!("FROM ${{base_image}}\nADD --checksum={sum} https://e.com/a https://e.com/b /x/\n"), base)
        .to_string();
    assert!(e.contains("can't be specified for multiple sources"), "{e}");
    let e = err("FROM ${base_image}\nADD --checksum=md5:abc https://e.com/a /x\n", base).to_string();
    assert!(e.contains("expected sha256:"), "{e}");
    let e = err("FROM ${base_image}\nADD --unpack=maybe a.tgz /x\n", base).to_string();
    assert!(e.contains("--unpack"), "{e}");
    for git in ["git@github.com:o/r.git", "https://github.com/o/r.git", "git://h/r", "ssh://git@h/r"] {
        let e = err(&format!("FROM ${{base_image}}\nADD {git} /src\n"), base).to_string();
        assert!(e.contains(":2:") && e.contains("git repository"), "{git}: {e}");
    }
    let e = err("FROM ${base_image}\nCOPY https://e.com/a /x\n", base).to_string();
    assert!(e.contains("use ADD"), "{e}");
    let e = err("FROM ${base_image}\nCOPY --unpack a.tgz /x\n", base).to_string();
    assert!(e.contains("--unpack"), "{e}");
}
