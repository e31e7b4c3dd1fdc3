//! A realistic stream of BusinessInfinity events: decisions with agent
//! votes, workflow executions, business metrics and audit events.

use bi_ledger::{ExpectedVersion, NewEvent};
use serde_json::json;

/// Small deterministic generator, so demo runs are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
}

const AGENTS: &[&str] = &["ceo", "cfo", "cto", "coo", "cmo", "legal", "risk"];
const DECISION_TYPES: &[&str] = &["strategic", "financial", "technical", "operational"];
const WORKFLOWS: &[&str] = &[
    "vendor-onboarding",
    "quarterly-close",
    "hiring-pipeline",
    "incident-review",
];
const METRICS: &[&str] = &["revenue", "burn_rate", "nps", "churn", "cac", "uptime"];

/// The events of one business "story", each story on its own streams.
/// Expected versions are set where a real caller would know them.
pub fn story(rng: &mut Rng, n: u64) -> Vec<NewEvent> {
    let mut out = Vec::new();
    match n % 4 {
        0 => {
            let id = format!("decision-{n:08}");
            let kind = rng.pick(DECISION_TYPES);
            out.push(
                NewEvent::json(&id, "DecisionQueued", &json!({
                    "decision_id": id, "decision_type": kind,
                    "title": format!("{kind} decision #{n}"),
                    "created_by": rng.pick(AGENTS),
                    "inputs": {"budget_eur": rng.below(5_000_000), "horizon_months": rng.below(36) + 1},
                }))
                .expect(ExpectedVersion::NoStream)
                .with_metadata("actor", "agent"),
            );
            let voters = 3 + rng.below(3);
            for i in 0..voters {
                let vote = [
                    "approve",
                    "approve",
                    "reject",
                    "abstain",
                    "approve_with_conditions",
                ][rng.below(5) as usize];
                out.push(NewEvent::json(&id, "AgentVoteCast", &json!({
                    "agent": AGENTS[i as usize], "vote": vote,
                    "confidence": (50 + rng.below(50)) as f64 / 100.0,
                    "reasoning": format!("Assessment {i} of decision {n}: risk within appetite, payback acceptable."),
                    "conditions": if vote == "approve_with_conditions" { vec!["quarterly review"] } else { vec![] },
                })));
            }
            out.push(NewEvent::json(
                &id,
                "DecisionCompleted",
                &json!({
                    "status": "completed",
                    "outcome": {"decision": "approved", "confidence": 0.82,
                                "action_items": ["notify finance", "schedule kickoff"],
                                "next_steps": "execute plan"},
                }),
            ));
        }
        1 => {
            let id = format!("workflow-{n:08}");
            let name = rng.pick(WORKFLOWS);
            let steps = 2 + rng.below(4);
            out.push(
                NewEvent::json(
                    &id,
                    "WorkflowStarted",
                    &json!({
                        "execution_id": id, "workflow_name": name, "version": "1.4.0",
                        "initiated_by": rng.pick(AGENTS), "total_steps": steps,
                        "parameters": {"priority": rng.below(5), "region": "eu-west"},
                    }),
                )
                .expect(ExpectedVersion::NoStream),
            );
            for s in 0..steps {
                out.push(NewEvent::json(&id, "WorkflowStepCompleted", &json!({
                    "step_id": format!("step-{s}"), "agent": rng.pick(AGENTS), "status": "completed",
                    "output": {"records_processed": rng.below(10_000), "duration_ms": rng.below(90_000)},
                })));
            }
            out.push(NewEvent::json(
                &id,
                "WorkflowCompleted",
                &json!({"status": "completed", "current_step": steps}),
            ));
        }
        2 => {
            let metric = rng.pick(METRICS);
            out.push(NewEvent::json(format!("metric-{metric}"), "MetricRecorded", &json!({
                "metric_id": format!("metric-{metric}"), "name": metric, "unit": "EUR",
                "value": rng.below(1_000_000) as f64 / 100.0, "target_value": 5000.0,
                "context": {"source": "finance-agent", "period": format!("2026-W{:02}", n % 52 + 1)},
            })));
        }
        _ => {
            out.push(
                NewEvent::json(format!("audit-2026-11-{:02}", n % 28 + 1), "AuditEvent", &json!({
                    "event_id": format!("audit-{n:08}"), "event_type": "data_access", "severity": "info",
                    "actor": rng.pick(AGENTS), "action": "read", "resource_type": "decision",
                    "resource_id": format!("decision-{:08}", rng.below(n + 1)), "outcome": "success",
                    "details": {"reason": "board pack preparation"},
                }))
                .with_metadata("retention", "10y"),
            );
        }
    }
    out
}
