//! `weir-rx report`: a day's reconciliation, from the audit log alone.
//!
//! ```text
//!  rx audit log ──verify chain──> records of the day ──> per flow (session, lane):
//!      sent      = the sender's marks (heartbeats: next record number)
//!      received  = blocks handed to the outbox (their record counts)
//!      lost      = the gap ledger's entries
//!      verdict   = sent == received + lost, every gap counted, outbox drained
//!  ──> report.json + report.md (with the controls the evidence supports)
//! ```
//!
//! The sender's figures come from its heartbeats, which the receiver
//! authenticated and wrote down (`sender_marks`): nothing travels back
//! over the diode, so the receiver's log is the only place both sides'
//! accounts meet.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};
use weir_shared::audit::{AuditRecord, hex};

/// One flow: a sender session's lane.
#[derive(Debug, Default, Clone)]
struct Flow {
    /// Sender's record numbers: before the day (or the session start), and
    /// the last the day's heartbeats reported.
    base_record: Option<u64>,
    sent_to: Option<u64>,
    base_block: Option<u64>,
    sent_block_to: Option<u64>,
    received_records: u64,
    received_blocks: u64,
    undescribed_blocks: u64,
    lost_records: u64,
    lost_blocks: u64,
    gaps: u64,
    uncounted_gaps: u64,
    sender: Option<u64>,
    sources: std::collections::BTreeSet<String>,
}

impl Flow {
    fn sent_records(&self) -> Option<u64> {
        Some(self.sent_to?.saturating_sub(self.base_record?))
    }

    fn sent_blocks(&self) -> Option<u64> {
        Some(self.sent_block_to?.saturating_sub(self.base_block?))
    }
}

fn lane_marks(body: &Value) -> impl Iterator<Item = (String, &Value)> {
    body["lanes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["lane"].as_str()?.to_owned(), l)))
}

/// Everything the report is built from.
#[derive(Debug, Default)]
struct Day {
    flows: BTreeMap<(String, String), Flow>,
    files: Vec<Value>,
    rejects: BTreeMap<String, u64>,
    delivery: Option<Value>,
    shutdown_backlog: Option<u64>,
    counts: BTreeMap<String, u64>,
    key_ids: Vec<Value>,
    retired: Vec<Value>,
    configs: Vec<Value>,
    sender_counters: BTreeMap<String, Value>,
    audit_dropped: u64,
}

impl Day {
    /// A `sender_marks` record before the day: its numbers are the base.
    fn before(&mut self, r: &AuditRecord) {
        if r.kind != "sender_marks" {
            return;
        }
        let session = r.body["session"].as_str().unwrap_or("?").to_owned();
        for (lane, m) in lane_marks(&r.body) {
            let f = self.flows.entry((session.clone(), lane)).or_default();
            f.base_record = m["next_record"].as_u64();
            f.base_block = m["last_sent"].as_u64().map(|b| b + 1);
        }
    }

    fn during(&mut self, r: &AuditRecord) {
        *self.counts.entry(r.kind.clone()).or_default() += 1;
        let b = &r.body;
        let session = b["session"].as_str().unwrap_or("?").to_owned();
        let lane = b["lane"].as_str().unwrap_or("?").to_owned();
        match r.kind.as_str() {
            "sender_marks" => {
                self.sender_counters
                    .insert(session.clone(), b["counters"].clone());
                for (lane, m) in lane_marks(b) {
                    let f = self.flows.entry((session.clone(), lane)).or_default();
                    f.sender = b["sender"].as_u64();
                    f.base_record = f.base_record.or(m["first_record"].as_u64());
                    f.base_block = f.base_block.or(m["first_block"].as_u64());
                    f.sent_to = m["next_record"].as_u64();
                    f.sent_block_to = m["last_sent"].as_u64().map(|b| b + 1).or(f.sent_block_to);
                }
            }
            "blocks_received" => {
                let f = self.flows.entry((session, lane)).or_default();
                f.received_records += b["records"].as_u64().unwrap_or(0);
                f.received_blocks += b["blocks"].as_u64().unwrap_or(0);
                f.undescribed_blocks += b["undescribed_blocks"].as_u64().unwrap_or(0);
                let named = b["sources"].as_array().into_iter().flatten();
                f.sources
                    .extend(named.filter_map(|s| s.as_str().map(str::to_owned)));
            }
            "gap" => {
                let f = self.flows.entry((session, lane)).or_default();
                f.gaps += 1;
                f.lost_blocks += b["blocks"].as_u64().unwrap_or(0);
                match b["records"].as_u64() {
                    Some(n) => f.lost_records += n,
                    None => f.uncounted_gaps += 1,
                }
            }
            "file_delivered" => self.files.push(b.clone()),
            "rejects" => {
                for (k, v) in b["delta"].as_object().into_iter().flatten() {
                    *self.rejects.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
                }
            }
            "delivery" => self.delivery = Some(b.clone()),
            "shutdown" => {
                self.shutdown_backlog = b["outbox_entries"].as_u64();
                self.delivery = Some(b.clone());
            }
            "startup" => {
                self.key_ids
                    .clone_from(b["key_ids"].as_array().unwrap_or(&Vec::new()));
                self.retired
                    .clone_from(b["retired_key_ids"].as_array().unwrap_or(&Vec::new()));
            }
            "config" | "config_reload" => self
                .configs
                .push(json!({"ts": r.ts, "kind": r.kind, "body": b})),
            "audit_dropped" => self.audit_dropped += b["records"].as_u64().unwrap_or(0),
            _ => {}
        }
    }
}

/// Whether the broker acknowledged everything committed, as far as the
/// day's last delivery record tells.
fn published_state(d: &Day) -> &'static str {
    let Some(del) = &d.delivery else {
        return "unknown";
    };
    let acked_all = del["acked"].as_u64() == del["published"].as_u64();
    match d.shutdown_backlog {
        Some(0) if acked_all => "acknowledged",
        None if acked_all => "acknowledged (no shutdown record: outbox backlog not known)",
        _ => "pending",
    }
}

fn flow_json(((session, lane), f): (&(String, String), &Flow), published: &str) -> Value {
    let sent = f.sent_records();
    let accounted = f.received_records + f.lost_records;
    let verdict = match sent {
        None => "no sender account (no heartbeat written down)",
        Some(_) if f.uncounted_gaps > 0 => "loss reported, count unknown",
        Some(s)
            if s == accounted && f.lost_records == 0 && published.starts_with("acknowledged") =>
        {
            "reconciled"
        }
        Some(s) if s == accounted && f.lost_records == 0 => "received; publication pending",
        Some(s) if s == accounted => "reconciled with reported loss",
        Some(_) => "unreconciled",
    };
    json!({
        "session": session, "sender": f.sender, "lane": lane,
        "sent_records": sent, "sent_blocks": f.sent_blocks(),
        "received_records": f.received_records, "received_blocks": f.received_blocks,
        "undescribed_blocks": f.undescribed_blocks,
        "lost_records": f.lost_records, "lost_blocks": f.lost_blocks,
        "gap_entries": f.gaps, "uncounted_gaps": f.uncounted_gaps,
        "published": published, "sources": f.sources,
        "difference": sent.map(|s| i128::from(s) - i128::from(accounted)).map(|d| d.to_string()),
        "verdict": verdict,
    })
}

/// The controls the evidence maps to: what it supports, and its limits.
fn controls() -> Value {
    json!([
        {"control": "NIST SP 800-171 3.1.3", "title": "Control the flow of CUI",
         "evidence": "Per flow (sender session, lane): records the sender says it sent, received and lost; files delivered with their SHA-256; key ids in use.",
         "limits": "Shows what Weir accepted and delivered; authorisation of the flow itself is a site decision."},
        {"control": "NIST SP 800-171 3.13.1", "title": "Monitor and control communications at boundaries",
         "evidence": "Datagrams refused at the receiver by reason (CRC, malformed, authentication, replay, old session, retired key); sender sessions seen; sender health from heartbeats.",
         "limits": "Covers Weir's receive port only, not other traffic at the boundary."},
        {"control": "IEC 62443-3-3 SR 5.1", "title": "Network segmentation",
         "evidence": "All data arrived as one-way UDP from the sessions listed; the receiver sent nothing back (no acknowledgement exists in the protocol).",
         "limits": "Segmentation is enforced by the hardware diode and the network design; this log supports, it does not prove it."},
        {"control": "IEC 62443-3-3 SR 5.2", "title": "Zone boundary protection",
         "evidence": "Every block authenticated (AES-256-GCM) before use; refusals counted by reason; loss written down per flow.",
         "limits": "Integrity of the log itself rests on the hash chain and on keeping its head hash off this host."},
        {"control": "NIS2 Art. 21(2)(d)", "title": "Supply chain security (data supplied to IT consumers)",
         "evidence": "What was handed on to the broker and the output directory, with losses accounted.",
         "limits": "Says nothing about suppliers or vendors."},
        {"control": "NIS2 Art. 21(2)(e)", "title": "Security in maintenance",
         "evidence": "Versions and configuration fingerprints at each start and reload.",
         "limits": "No vulnerability handling evidence."},
        {"control": "NIS2 Art. 21(2)(h)", "title": "Cryptography",
         "evidence": "Key ids loaded and retired at each start; authentication failures counted; key material never logged.",
         "limits": "Key custody and rotation practice are documented elsewhere."}
    ])
}

/// Build the report of `day` (UTC) from the audit log at `path`.
pub fn build(path: &Path, day: chrono::NaiveDate) -> anyhow::Result<Value> {
    let head = weir_service::audit::verify_file(path)?.map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}: the audit chain is broken; no report",
            path.display()
        )
    })?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut d = Day::default();
    let mut records = 0u64;
    for line in text.lines() {
        let r = AuditRecord::parse(line)
            .ok()
            .context("audit record unreadable after verification")?;
        let date = chrono::DateTime::parse_from_rfc3339(&r.ts)
            .map(|t| t.with_timezone(&chrono::Utc).date_naive())
            .ok();
        match date {
            Some(x) if x < day => d.before(&r),
            Some(x) if x == day => {
                records += 1;
                d.during(&r);
            }
            _ => {}
        }
    }
    let published = published_state(&d);
    let flows: Vec<Value> = d
        .flows
        .iter()
        .filter(|(_, f)| {
            f.sent_records().unwrap_or(0) > 0
                || f.received_records > 0
                || f.gaps > 0
                || f.received_blocks > 0
        })
        .map(|x| flow_json(x, published))
        .collect();
    let all_ok = flows.iter().all(|f| {
        f["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("reconciled"))
    }) && d.audit_dropped == 0;
    Ok(json!({
        "day": day.to_string(),
        "audit_log": {"path": path.display().to_string(), "intact": true, "records": head.count,
            "head": hex(&head.head), "records_of_day": records, "kinds": d.counts,
            "audit_dropped": d.audit_dropped},
        "receiver": {"key_ids": d.key_ids, "retired_key_ids": d.retired, "config_changes": d.configs},
        "flows": flows,
        "sender_counters": d.sender_counters,
        "files_delivered": d.files,
        "rejects": d.rejects,
        "delivery": d.delivery,
        "verdict": if flows.is_empty() { "no flows" } else if all_ok { "reconciled" } else { "see flows" },
        "controls": controls(),
    }))
}

/// The report as Markdown.
pub fn markdown(r: &Value) -> String {
    let mut m = String::new();
    let a = &r["audit_log"];
    let _ = writeln!(
        m,
        "# Weir transfer report, {}\n",
        r["day"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        m,
        "Audit log `{}`: chain intact, {} records, head `{}`; {} records on this day.\n",
        a["path"].as_str().unwrap_or("?"),
        a["records"],
        a["head"].as_str().unwrap_or("?"),
        a["records_of_day"]
    );
    let _ = writeln!(m, "**Verdict: {}**\n", r["verdict"].as_str().unwrap_or("?"));
    let _ = writeln!(m, "## Flows\n");
    let _ = writeln!(
        m,
        "| session | lane | sent | received | lost | gaps | published | verdict |\n|---|---|---:|---:|---:|---:|---|---|"
    );
    for f in r["flows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            f["session"].as_str().unwrap_or("?"),
            f["lane"].as_str().unwrap_or("?"),
            f["sent_records"],
            f["received_records"],
            f["lost_records"],
            f["gap_entries"],
            f["published"].as_str().unwrap_or("?"),
            f["verdict"].as_str().unwrap_or("?"),
        );
    }
    let _ = writeln!(
        m,
        "\nCounts are records. Sent: the sender's own numbering, from its authenticated heartbeats. Received: records in blocks committed to the outbox. Lost: the gap ledger. Published: whether the broker acknowledged every message (receiver-wide).\n"
    );
    let _ = writeln!(m, "## Sources received\n");
    for f in r["flows"].as_array().into_iter().flatten() {
        let names: Vec<&str> = f["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            m,
            "- {} {}: {}",
            f["session"].as_str().unwrap_or("?"),
            f["lane"].as_str().unwrap_or("?"),
            if names.is_empty() {
                "(none named)".to_owned()
            } else {
                names.join(", ")
            }
        );
    }
    let _ = writeln!(m, "\n## Files delivered (file transfer)\n");
    let files = r["files_delivered"].as_array().cloned().unwrap_or_default();
    if files.is_empty() {
        let _ = writeln!(m, "None.");
    }
    for f in &files {
        let _ = writeln!(
            m,
            "- `{}`: {} bytes, SHA-256 `{}`",
            f["name"].as_str().unwrap_or("?"),
            f["bytes"],
            f["sha256"].as_str().unwrap_or("?")
        );
    }
    let _ = writeln!(m, "\n## Refused at the boundary\n");
    let rejects = r["rejects"].as_object().cloned().unwrap_or_default();
    if rejects.is_empty() {
        let _ = writeln!(m, "Nothing refused.");
    }
    for (k, v) in &rejects {
        let _ = writeln!(m, "- {k}: {v}");
    }
    let _ = writeln!(
        m,
        "\n## Controls\n\n| control | what the evidence supports | limits |\n|---|---|---|"
    );
    for c in r["controls"].as_array().into_iter().flatten() {
        let _ = writeln!(
            m,
            "| {} ({}) | {} | {} |",
            c["control"].as_str().unwrap_or("?"),
            c["title"].as_str().unwrap_or("?"),
            c["evidence"].as_str().unwrap_or("?"),
            c["limits"].as_str().unwrap_or("?")
        );
    }
    m
}

/// `weir-rx report`: print (or write to `out`) the report of `day`.
pub fn command(path: &Path, day: &str, json_out: bool, out: Option<&Path>) -> anyhow::Result<()> {
    let date = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .with_context(|| format!("--day {day}: not a YYYY-MM-DD date"))?;
    let r = build(path, date)?;
    let md = markdown(&r);
    let js = serde_json::to_string_pretty(&r)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let base = dir.join(format!("weir-report-{date}"));
        std::fs::write(base.with_extension("json"), format!("{js}\n"))?;
        std::fs::write(base.with_extension("md"), &md)?;
        println!(
            "{} and {}",
            base.with_extension("json").display(),
            base.with_extension("md").display()
        );
    } else if json_out {
        println!("{js}");
    } else {
        print!("{md}");
    }
    Ok(())
}
