//! The crate graph keeps its layers: a test that fails when a crate depends on one it must
//! not (read from `cargo metadata`, so it sees exactly what Cargo builds). The README's
//! architecture section draws the same graph.
//!
//! Layers, bottom up: `medlake-common`; `medlake-auth`, `medlake-lake`, `medlake-deid` (the
//! de-identification functions: DataFusion only), `medlake-hl7` (HL7 v2 reading), `medlake-dicom`
//! (DICOM header reading), `medlake-fhir` (SQL-on-FHIR views); the audit log
//! `medlake-audit` and the source contract `medlake-source(s)`; the connectors
//! `medlake-source-*`; `medlake-views` and `medlake-alerts`; `medlake-engine`; the doors (`medlake-pgwire`,
//! `medlake-flight`, `medlake-http`, `medlake-mllp`); the demo hospital `medlake-demo`; the `medlake` command
//! line on top, the only crate that
//! knows every other.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every workspace crate and the workspace crates it depends on (normal and build
/// dependencies; dev-dependencies are a test's business).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    packages
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|d| members.contains(*d))
                .map(str::to_owned)
                .collect();
            (name, deps)
        })
        .collect()
}

/// The layer of a crate (higher may depend on lower, never the reverse or sideways
/// between doors).
fn layer(name: &str) -> Option<u8> {
    Some(match name {
        "medlake-common" => 0,
        // HL7 v2 reading is pure (std and chrono), DICOM header reading pure (dicom-rs),
        // SQL-on-FHIR views pure (serde_json and the fhir_view() DataFusion function): beside
        // the lowest services.
        "medlake-auth" | "medlake-lake" | "medlake-deid" | "medlake-hl7" | "medlake-dicom"
        | "medlake-fhir" => 1,
        // The audit log writes through the lake, beside the source contract.
        "medlake-source" | "medlake-sources" | "medlake-audit" => 2,
        n if n.starts_with("medlake-source-") => 3,
        // Ballista: external tables reopen on executors through the source contract, so the
        // cluster sits beside the connectors (and never sees one: they come as a registry).
        "medlake-cluster" => 3,
        // Alert rules and their delivery beside the views: the engine evaluates them.
        "medlake-views" | "medlake-alerts" => 4,
        "medlake-engine" => 5,
        "medlake-pgwire" | "medlake-flight" | "medlake-http" | "medlake-mllp" => 6,
        "medlake-demo" => 7,
        "medlake" => 8,
        // Test fixtures (a TDS server) stand apart: only tests use them.
        "medlake-tds-testserver" => return None,
        other => panic!("{other}: a new crate must be placed in a layer here and in the README"),
    })
}

#[test]
fn crates_depend_only_on_lower_layers() {
    let graph = graph();
    assert!(graph.contains_key("medlake-engine"), "{graph:?}");
    let mut wrong = Vec::new();
    for (name, deps) in &graph {
        let Some(own) = layer(name) else { continue };
        for dep in deps {
            match layer(dep) {
                None => wrong.push(format!("{name} -> {dep} (a test fixture)")),
                Some(theirs) if theirs >= own => {
                    wrong.push(format!("{name} (layer {own}) -> {dep} (layer {theirs})"));
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "crates depend across layers: {wrong:#?}");
}

#[test]
fn views_never_see_a_connector_and_connectors_never_see_each_other() {
    let graph = graph();
    for receiver in ["medlake-views", "medlake-cluster"] {
        let deps = &graph[receiver];
        assert!(
            !deps.iter().any(|d| d.starts_with("medlake-source-")),
            "{receiver} must receive connectors as a registry: {deps:?}"
        );
    }
    for (name, deps) in graph
        .iter()
        .filter(|(n, _)| n.starts_with("medlake-source-"))
    {
        let others: Vec<_> = deps
            .iter()
            .filter(|d| d.starts_with("medlake-source-"))
            .collect();
        assert!(others.is_empty(), "{name} depends on {others:?}");
    }
}

/// The crate graph as the README draws it: one line per crate, bottom layer first, with the
/// workspace crates it depends on (test fixtures apart).
fn drawing(graph: &BTreeMap<String, BTreeSet<String>>) -> String {
    let mut crates: Vec<(u8, &String)> = graph
        .keys()
        .filter_map(|name| layer(name).map(|l| (l, name)))
        .collect();
    crates.sort();
    let mut text = String::new();
    for (level, name) in crates {
        let deps: Vec<&str> = graph[name].iter().map(String::as_str).collect();
        let deps = if deps.is_empty() {
            "(no medlake crate)".to_string()
        } else {
            deps.join(", ")
        };
        text.push_str(&format!("{level}  {name:<25} ─▶ {deps}\n"));
    }
    text
}

/// The README's crate graph is generated from `cargo metadata`; when the graph changes this
/// test fails, and `MEDLAKE_BLESS=1 cargo test -p medlake --test it layering` rewrites it.
#[test]
fn the_readme_draws_the_crate_graph_cargo_builds() {
    const BEGIN: &str = "<!-- crate-graph: generated by crates/cli/tests/it/layering.rs -->\n```\n";
    const END: &str = "```\n<!-- crate-graph end -->";
    let drawn = drawing(&graph());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme
        .find(BEGIN)
        .expect("the README has the crate-graph block")
        + BEGIN.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("the crate-graph block ends");
    if readme[start..end] != drawn {
        if std::env::var_os("MEDLAKE_BLESS").is_some() {
            let rewritten = format!("{}{drawn}{}", &readme[..start], &readme[end..]);
            std::fs::write(&path, rewritten).expect("README.md written");
        } else {
            panic!(
                "the README's crate graph is out of date (MEDLAKE_BLESS=1 rewrites it); cargo \
                 builds:\n{drawn}"
            );
        }
    }
}
