//! Safe-rollout drills and kill switches: injected faults per service (`[[service.fault]]`)
//! and fleet-wide switches (`[[switch]]`). Both are off unless configured, and both are
//! validated like every other setting (located errors, bounded counts).

use crate::limits::{MAX_FAULTS_PER_SERVICE, MAX_FAULT_DELAY_MS, MAX_PATH_PREFIX_LEN};
use crate::limits::{MAX_SWITCHES, MAX_SWITCH_NAME_LEN};
use crate::locate::PathSeg::{self, Index, Key};
use crate::model::ServiceConfig;
use crate::validate::Checker;
use serde::Deserialize;
use std::collections::HashMap;

/// An injected fault, for drills: makes a service misbehave on purpose so that rollout gates,
/// safe mode and alerting can be exercised. Never configure one by accident: every fault is
/// visible in the configuration and answers carry `x-firebreak-fault`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Request paths starting with this prefix are affected (default: every path). Only for
    /// `status`, `delay` and `panic`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// What the fault does.
    pub action: FaultAction,
    /// The status answered, for `status` (500 to 599).
    #[serde(default)]
    pub status: Option<u16>,
    /// How long each affected request is held before it continues, for `delay`
    /// (1 to [`MAX_FAULT_DELAY_MS`]).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Share of the matching requests affected, 1 to 100 (default 100). Only for `status`,
    /// `delay` and `panic`.
    #[serde(default)]
    pub percent: Option<u32>,
}

impl FaultConfig {
    /// The share of matching requests affected, in percent.
    pub fn percent(&self) -> u32 {
        self.percent.unwrap_or(100)
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// The edge answers `status` itself.
    Status,
    /// The request waits `delay_ms`, then is served normally.
    Delay,
    /// Request handling panics (the edge catches it and answers 500).
    Panic,
    /// Building the runtime for this configuration fails: the version cannot be staged.
    FailBuild,
    /// The process aborts when a runtime carrying this fault is installed for serving
    /// (building it, as staging does, succeeds): a latent crash bug, for safe-mode drills.
    CrashOnLoad,
}

impl FaultAction {
    fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Delay => "delay",
            Self::Panic => "panic",
            Self::FailBuild => "fail_build",
            Self::CrashOnLoad => "crash_on_load",
        }
    }

    /// Whether the fault acts on requests (and so takes `path_prefix` and `percent`).
    pub fn per_request(self) -> bool {
        matches!(self, Self::Status | Self::Delay | Self::Panic)
    }
}

/// A kill switch: a named, pre-agreed way to turn one risky behaviour of a service off,
/// flipped by changing `on`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// Unique name: 1 to [`MAX_SWITCH_NAME_LEN`] of a-z, 0-9, `-`, `_`.
    pub name: String,
    /// The service it acts on.
    pub service: String,
    /// What it turns off.
    pub action: SwitchAction,
    /// Whether it is engaged.
    #[serde(default)]
    pub on: bool,
}

/// What a kill switch turns off.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SwitchAction {
    /// The cache: every request goes to the origin, nothing is stored.
    BypassCache,
    /// Stale serving: stale-while-revalidate, stale-if-error and the safety net.
    NoStale,
    /// Cache rules matching by `path_regex` (prefix rules stay).
    NoRegexRules,
    /// The whole service: it answers 503.
    DisableService,
}

/// Checks a service's `fault` array at `base` (`service[i].fault`).
pub(crate) fn check_faults(c: &mut Checker, base: &[PathSeg], faults: &[FaultConfig]) {
    let at = |rest: &[PathSeg]| -> Vec<PathSeg> { base.iter().chain(rest).cloned().collect() };
    if !c.count(base, faults.len(), 0, MAX_FAULTS_PER_SERVICE, "faults") {
        return;
    }
    for (i, f) in faults.iter().enumerate() {
        let action = f.action.as_str();
        if let Some(prefix) = &f.path_prefix {
            if !f.action.per_request() {
                c.fail(
                    &at(&[Index(i), Key("path_prefix")]),
                    format!("not used by action `{action}`"),
                );
            } else if !prefix.starts_with('/') || prefix.len() > MAX_PATH_PREFIX_LEN {
                c.fail(
                    &at(&[Index(i), Key("path_prefix")]),
                    format!("must start with '/' and be at most {MAX_PATH_PREFIX_LEN} bytes"),
                );
            }
        }
        if let Some(percent) = f.percent {
            if !f.action.per_request() {
                c.fail(
                    &at(&[Index(i), Key("percent")]),
                    format!("not used by action `{action}`"),
                );
            } else if !(1..=100).contains(&percent) {
                c.fail(
                    &at(&[Index(i), Key("percent")]),
                    format!("must be between 1 and 100, got {percent}"),
                );
            }
        }
        match (f.action, f.status) {
            (FaultAction::Status, None) => c.fail(
                &at(&[Index(i)]),
                "action `status` needs `status` (500 to 599)",
            ),
            (FaultAction::Status, Some(s)) if !(500..=599).contains(&s) => c.fail(
                &at(&[Index(i), Key("status")]),
                format!("must be between 500 and 599, got {s}"),
            ),
            (FaultAction::Status, Some(_)) | (_, None) => {}
            (_, Some(_)) => c.fail(
                &at(&[Index(i), Key("status")]),
                format!("not used by action `{action}` (only by `status`)"),
            ),
        }
        match (f.action, f.delay_ms) {
            (FaultAction::Delay, None) => c.fail(
                &at(&[Index(i)]),
                format!("action `delay` needs `delay_ms` (1 to {MAX_FAULT_DELAY_MS})"),
            ),
            (FaultAction::Delay, Some(ms)) if ms == 0 || ms > MAX_FAULT_DELAY_MS => c.fail(
                &at(&[Index(i), Key("delay_ms")]),
                format!("must be between 1 and {MAX_FAULT_DELAY_MS} ms, got {ms}"),
            ),
            (FaultAction::Delay, Some(_)) | (_, None) => {}
            (_, Some(_)) => c.fail(
                &at(&[Index(i), Key("delay_ms")]),
                format!("not used by action `{action}` (only by `delay`)"),
            ),
        }
    }
}

/// Checks the top-level `switch` array. The service a switch names is checked only when the
/// file has services: under the control plane the fleet document is validated together with
/// the service documents, but a fleet document alone carries none.
pub(crate) fn check_switches(
    c: &mut Checker,
    switches: &[SwitchConfig],
    services: &[ServiceConfig],
) {
    if !c.count(
        &[Key("switch")],
        switches.len(),
        0,
        MAX_SWITCHES,
        "switches",
    ) {
        return;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, s) in switches.iter().enumerate() {
        let at = |k: &'static str| vec![Key("switch"), Index(i), Key(k)];
        if !valid_switch_name(&s.name) {
            c.fail(
                &at("name"),
                format!(
                    "`{}` is not a valid name: use 1 to {MAX_SWITCH_NAME_LEN} of a-z, 0-9, '-', '_'",
                    s.name
                ),
            );
        } else if let Some(first) = names.insert(&s.name, i) {
            c.fail(
                &at("name"),
                format!(
                    "switch name `{}` is already used by switch[{first}]",
                    s.name
                ),
            );
        }
        if !services.is_empty() && !services.iter().any(|svc| svc.name == s.service) {
            c.fail(
                &at("service"),
                format!("no service is named `{}`", s.service),
            );
        }
    }
}

fn valid_switch_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SWITCH_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]
mod tests {
    use crate::*;

    /// A standalone file with service `a`; `fault` goes inside the service (line 8 on),
    /// `top` at the end of the file.
    fn file(fault: &str, top: &str) -> String {
        format!(
            "\n[[listener]]\naddr = \"127.0.0.1:8080\"\n\n[[service]]\nname = \"a\"\nhosts = [\"a.example\"]\n{fault}\n[service.origin]\nservers = [{{ addr = \"127.0.0.1:9000\" }}]\n{top}"
        )
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse_str("edge.toml", text) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(e) => e.errors,
        }
    }

    #[test]
    fn faults_and_switches_are_off_by_default() {
        let c = parse_str("t", &file("", "")).unwrap();
        assert!(c.services[0].faults.is_empty());
        assert!(c.switches.is_empty());
    }

    #[test]
    fn every_action_parses_with_its_own_fields() {
        let text = file(
            "[[service.fault]]\npath_prefix = \"/x\"\naction = \"status\"\nstatus = 503\npercent = 10\n\
             [[service.fault]]\naction = \"delay\"\ndelay_ms = 200\n\
             [[service.fault]]\naction = \"panic\"\n\
             [[service.fault]]\naction = \"fail_build\"\n\
             [[service.fault]]\naction = \"crash_on_load\"\n",
            "[[switch]]\nname = \"a-bypass\"\nservice = \"a\"\naction = \"bypass_cache\"\non = true\n\
             [[switch]]\nname = \"a_off\"\nservice = \"a\"\naction = \"disable_service\"\n",
        );
        let c = parse_str("t", &text).unwrap_or_else(|e| panic!("{e}"));
        let f = &c.services[0].faults;
        assert_eq!(f.len(), 5);
        assert_eq!(
            (f[0].action, f[0].status, f[0].percent()),
            (FaultAction::Status, Some(503), 10)
        );
        assert_eq!((f[1].delay_ms, f[1].percent()), (Some(200), 100));
        assert_eq!(f[4].action, FaultAction::CrashOnLoad);
        assert_eq!(c.switches.len(), 2);
        assert_eq!(
            (c.switches[0].action, c.switches[0].on),
            (SwitchAction::BypassCache, true)
        );
        assert!(!c.switches[1].on);
    }

    #[test]
    fn fault_fields_are_checked_and_located() {
        let text = file(
            "[[service.fault]]\naction = \"status\"\nstatus = 404\n\
             [[service.fault]]\naction = \"delay\"\ndelay_ms = 60001\nstatus = 500\n\
             [[service.fault]]\naction = \"panic\"\npercent = 0\npath_prefix = \"x\"\n\
             [[service.fault]]\naction = \"fail_build\"\npercent = 50\n\
             [[service.fault]]\naction = \"status\"\n",
            "",
        );
        let e = errors(&text);
        let got: Vec<(String, usize, usize)> = e
            .iter()
            .map(|e| (e.field.clone(), e.line, e.column))
            .collect();
        let want = [
            ("service[0].fault[0].status", 10, 10),
            ("service[0].fault[1].delay_ms", 13, 12),
            ("service[0].fault[1].status", 14, 10),
            ("service[0].fault[2].percent", 17, 11),
            ("service[0].fault[2].path_prefix", 18, 15),
            ("service[0].fault[3].percent", 21, 11),
            ("service[0].fault[4]", 22, 1),
        ];
        let want: Vec<(String, usize, usize)> = want
            .iter()
            .map(|(f, l, c)| (f.to_string(), *l, *c))
            .collect();
        assert_eq!(got, want, "{e:#?}");
        assert!(
            e[0].message.contains("between 500 and 599"),
            "{}",
            e[0].message
        );
        assert!(
            e[2].message.contains("only by `delay`") || e[2].message.contains("only by `status`")
        );
        assert!(
            e[5].message.contains("not used by action `fail_build`"),
            "{}",
            e[5].message
        );
        assert!(e[6].message.contains("needs `status`"), "{}", e[6].message);
    }

    #[test]
    fn unknown_fault_action_is_a_located_parse_error() {
        let e = errors(&file("[[service.fault]]\naction = \"explode\"\n", ""));
        assert_eq!(e[0].field, "service[0].fault[0].action", "{e:?}");
        assert_eq!(e[0].line, 9, "{e:?}");
    }

    #[test]
    fn at_most_sixteen_faults_per_service() {
        let many = "[[service.fault]]\naction = \"panic\"\n".repeat(MAX_FAULTS_PER_SERVICE + 1);
        let e = errors(&file(&many, ""));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "service[0].fault");
        assert!(
            e[0].message.contains("at most 16 faults"),
            "{}",
            e[0].message
        );
        let ok = "[[service.fault]]\naction = \"panic\"\n".repeat(MAX_FAULTS_PER_SERVICE);
        parse_str("t", &file(&ok, "")).unwrap();
    }

    #[test]
    fn switches_are_checked_and_located() {
        let top = "[[switch]]\nname = \"Bad Name\"\nservice = \"a\"\naction = \"no_stale\"\n\
                   [[switch]]\nname = \"s\"\nservice = \"nope\"\naction = \"no_regex_rules\"\n\
                   [[switch]]\nname = \"s\"\nservice = \"a\"\naction = \"no_stale\"\n";
        let e = errors(&file("", top));
        let got: Vec<(&str, usize)> = e.iter().map(|e| (e.field.as_str(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("switch[0].name", 12),
                ("switch[1].service", 17),
                ("switch[2].name", 20)
            ],
            "{e:#?}"
        );
        assert!(e[1].message.contains("no service is named `nope`"));
        assert!(e[2].message.contains("already used by switch[1]"));
        let e = errors(&file(
            "",
            "[[switch]]\nname = \"x\"\nservice = \"a\"\naction = \"off\"\n",
        ));
        assert_eq!(e[0].field, "switch[0].action", "{e:?}");
    }

    #[test]
    fn at_most_sixty_four_switches() {
        let top: String = (0..=MAX_SWITCHES)
            .map(|i| {
                format!("[[switch]]\nname = \"s{i}\"\nservice = \"a\"\naction = \"no_stale\"\n")
            })
            .collect();
        let e = errors(&file("", &top));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field, "switch");
        assert!(
            e[0].message.contains("at most 64 switches"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn a_fleet_document_without_services_may_name_any_service() {
        // Validated alone, a fleet document has no [[service]]: the reference is checked when
        // it is validated together with the service documents.
        let fleet = "[[switch]]\nname = \"s\"\nservice = \"elsewhere\"\naction = \"no_stale\"\n";
        let mut c = Checker {
            problems: Vec::new(),
            skip_regexes: false,
        };
        super::check_switches(&mut c, &parse_switches(fleet), &[]);
        assert!(c.problems.is_empty());
    }

    use crate::validate::Checker;

    fn parse_switches(text: &str) -> Vec<SwitchConfig> {
        #[derive(serde::Deserialize)]
        struct Doc {
            switch: Vec<SwitchConfig>,
        }
        toml::from_str::<Doc>(text).unwrap().switch
    }
}
