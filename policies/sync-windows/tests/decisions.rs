//! The sync-windows decisions, natively: a change held while a window says no
//! is left where the next tick finds it, and deployed once the window lets
//! it through; a config that does not read refuses every deploy.

use std::collections::BTreeMap;

use autodeploy_policy_contract::model::{
    Facts, Lookup, Project, ProjectKind, TriggerSource, Verdict,
};
use autodeploy_sync_windows as policy;

const OLD: &str = "1111111111111111111111111111111111111111";
const NEW: &str = "2222222222222222222222222222222222222222";

/// Deny 22:00-06:00 Berlin time (21:00-05:00 UTC in November) for `env=prod`.
const NIGHT_FREEZE: &str = r#"{"windows":[{"name":"night freeze","kind":"deny",
    "schedule":"0 22 * * *","duration":"8h","time_zone":"Europe/Berlin",
    "match_labels":{"env":"prod"}}]}"#;

/// 2026-11-26 (a Thursday) at `hh:mm` UTC.
fn at(hh_mm: &str) -> i64 {
    let (h, m) = hh_mm.split_once(':').unwrap();
    1_795_651_200 + h.parse::<i64>().unwrap() * 3600 + m.parse::<i64>().unwrap() * 60
}

fn prod(kind: ProjectKind) -> Project {
    Project {
        id: "7".into(),
        name: "shop".into(),
        kind,
        auto_deploy_enabled: true,
        last_tracked_commit: OLD.into(),
        expose_service: Some("web".into()),
        expose_port: Some(8080),
        labels: [("env".to_string(), "prod".to_string())].into(),
        ..Project::default()
    }
}

fn facts(config: &str, now: i64) -> Facts {
    Facts {
        config: config.into(),
        now_unix_seconds: now,
        ..Facts::default()
    }
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[test]
fn the_epoch_helper_is_right() {
    // 2026-11-26T00:00:00Z.
    assert_eq!(at("00:00"), 1_795_651_200);
}

#[test]
fn a_commit_is_held_during_a_deny_window_and_deployed_on_the_first_tick_after() {
    let project = prod(ProjectKind::Compose);
    let night = facts(NIGHT_FREEZE, at("23:30"));
    let held = policy::decide_commit(&project, &night, TriggerSource::AutoPush, Some(NEW)).unwrap();
    assert!(!held.trigger);
    assert_eq!(
        held.record, None,
        "nothing recorded: the next tick decides again"
    );
    assert_eq!(
        held.reason,
        "held by deny window \"night freeze\" (0 22 * * * for 8h, Europe/Berlin) until \
         2026-11-27 06:00 CET; not deploying yet: main moved from 111111111111 to 222222222222"
    );
    // Still held a minute before it closes; the project is as the hold left it.
    let late = facts(NIGHT_FREEZE, at("23:30") + 5 * 3600 + 29 * 60);
    let still = policy::decide_commit(&project, &late, TriggerSource::AutoPoll, Some(NEW)).unwrap();
    assert!(!still.trigger && still.record.is_none(), "{still:?}");
    // The first tick after 06:00 CET deploys it.
    let morning = facts(NIGHT_FREEZE, at("23:30") + 5 * 3600 + 30 * 60);
    let released =
        policy::decide_commit(&project, &morning, TriggerSource::AutoPoll, Some(NEW)).unwrap();
    assert!(released.trigger);
    assert_eq!(released.record.as_deref(), Some(NEW));
    assert_eq!(
        released.reason,
        "main moved from 111111111111 to 222222222222"
    );
}

#[test]
fn the_first_deploy_to_align_is_held_too() {
    let project = Project {
        last_tracked_commit: String::new(),
        ..prod(ProjectKind::Compose)
    };
    let d = policy::decide_commit(
        &project,
        &facts(NIGHT_FREEZE, at("23:30")),
        TriggerSource::AutoPush,
        Some(NEW),
    )
    .unwrap();
    assert!(!d.trigger && d.record.is_none(), "{d:?}");
}

#[test]
fn windows_only_hold_the_projects_whose_labels_they_match() {
    let mut staging = prod(ProjectKind::Compose);
    staging.labels = [("env".to_string(), "staging".to_string())].into();
    let d = policy::decide_commit(
        &staging,
        &facts(NIGHT_FREEZE, at("23:30")),
        TriggerSource::AutoPush,
        Some(NEW),
    )
    .unwrap();
    assert!(d.trigger, "{d:?}");
    assert_eq!(d.record.as_deref(), Some(NEW));
}

#[test]
fn nothing_to_deploy_is_answered_as_the_default_policy_does() {
    let project = Project {
        last_tracked_commit: NEW.into(),
        ..prod(ProjectKind::Compose)
    };
    let night = facts(NIGHT_FREEZE, at("23:30"));
    assert_eq!(
        policy::decide_commit(&project, &night, TriggerSource::AutoPush, Some(NEW)),
        autodeploy_guest::decide_commit(&project, &night, TriggerSource::AutoPush, Some(NEW))
    );
    // A missing branch stays an error; the master switch still pauses first.
    assert!(policy::decide_commit(&project, &night, TriggerSource::AutoPush, None).is_err());
    let paused = Facts {
        auto_deploy_master_enabled: false,
        ..night
    };
    let d = policy::decide_commit(
        &prod(ProjectKind::Compose),
        &paused,
        TriggerSource::AutoPoll,
        Some(NEW),
    )
    .unwrap();
    assert!(!d.trigger);
    assert!(d.reason.contains("master switch"), "{}", d.reason);
}

#[test]
fn manual_deploys_pass_a_deny_window_unless_it_says_manual() {
    let project = prod(ProjectKind::Compose);
    let night = facts(NIGHT_FREEZE, at("23:30"));
    let d = policy::decide_commit(&project, &night, TriggerSource::Manual, Some(NEW)).unwrap();
    assert!(d.trigger, "{d:?}");
    assert!(
        policy::check_deployable(&project, &night, TriggerSource::Manual).is_allowed(),
        "a window without manual: true leaves manual deploys alone"
    );

    let strict = NIGHT_FREEZE.replace(r#""match_labels""#, r#""manual":true,"match_labels""#);
    let night = facts(&strict, at("23:30"));
    let d = policy::decide_commit(&project, &night, TriggerSource::Manual, Some(NEW)).unwrap();
    assert!(!d.trigger && d.record.is_none(), "{d:?}");
    let Verdict::Refused(why) = policy::check_deployable(&project, &night, TriggerSource::Manual)
    else {
        panic!("a manual deploy in a manual: true deny window is refused")
    };
    assert_eq!(
        why,
        "held by deny window \"night freeze\" (0 22 * * * for 8h, Europe/Berlin) until \
         2026-11-27 06:00 CET; the window holds manual deploys too (manual: true)"
    );
    let day = facts(&strict, at("12:00"));
    assert!(policy::check_deployable(&project, &day, TriggerSource::Manual).is_allowed());
}

#[test]
fn check_deployable_never_refuses_an_automatic_deploy_for_a_window() {
    // decide-* held it already; a refusal here would record a failed
    // deployment and the change with it.
    let strict = NIGHT_FREEZE.replace(r#""match_labels""#, r#""manual":true,"match_labels""#);
    let night = facts(&strict, at("23:30"));
    for source in [
        TriggerSource::AutoPoll,
        TriggerSource::AutoPush,
        TriggerSource::AutoImage,
    ] {
        assert_eq!(
            policy::check_deployable(&prod(ProjectKind::Compose), &night, source),
            autodeploy_guest::check_deployable(&prod(ProjectKind::Compose), &night, source)
        );
    }
}

#[test]
fn a_moved_digest_is_held_with_its_previous_value_and_deployed_after() {
    let project = prod(ProjectKind::Compose);
    let prior: BTreeMap<String, String> = [
        ("app:1".to_string(), digest('a')),
        ("db:15".to_string(), digest('d')),
    ]
    .into();
    let lookups: BTreeMap<String, Lookup> = [
        ("app:1".to_string(), Lookup::Digest(digest('b'))),
        ("db:15".to_string(), Lookup::Digest(digest('d'))),
        ("cache:7".to_string(), Lookup::Digest(digest('c'))),
    ]
    .into();

    let night = facts(NIGHT_FREEZE, at("23:30"));
    let held = policy::decide_images(&project, &night, &prior, &lookups);
    assert!(!held.trigger);
    let expected_record: BTreeMap<String, String> = [
        ("app:1".to_string(), digest('a')),
        ("cache:7".to_string(), digest('c')),
        ("db:15".to_string(), digest('d')),
    ]
    .into();
    assert_eq!(
        held.record, expected_record,
        "the moved image keeps its previous digest; the new one is recorded"
    );
    assert!(
        held.reason.starts_with(
            "held by deny window \"night freeze\" (0 22 * * * for 8h, Europe/Berlin) until \
             2026-11-27 06:00 CET; not deploying yet: image digest moved upstream: app:1"
        ),
        "{}",
        held.reason
    );

    // The next tick inside the window sees the same move and holds again.
    let again = policy::decide_images(
        &project,
        &facts(NIGHT_FREEZE, at("23:45")),
        &held.record,
        &lookups,
    );
    assert!(!again.trigger);
    assert_eq!(again.record, expected_record);

    // After the window: the move is still there to deploy.
    let morning = facts(NIGHT_FREEZE, at("23:30") + 6 * 3600);
    let released = policy::decide_images(&project, &morning, &again.record, &lookups);
    assert!(released.trigger, "{released:?}");
    assert_eq!(released.record.get("app:1"), Some(&digest('b')));
    assert_eq!(released.moved.len(), 1);
    assert_eq!(released.moved[0].image, "app:1");
}

const WEEKDAY_MORNINGS: &str = r#"{"windows":[{"name":"mornings","kind":"allow",
    "schedule":"0 9 * * mon-fri","duration":"3h"}]}"#;

#[test]
fn an_allow_window_holds_until_it_opens() {
    let project = prod(ProjectKind::Compose);
    let evening = facts(WEEKDAY_MORNINGS, at("18:00"));
    let held =
        policy::decide_commit(&project, &evening, TriggerSource::AutoPoll, Some(NEW)).unwrap();
    assert!(!held.trigger && held.record.is_none(), "{held:?}");
    assert_eq!(
        held.reason,
        "held: outside every allow window (\"mornings\"); the next to open is \"mornings\" at \
         2026-11-27 09:00 UTC; not deploying yet: main moved from 111111111111 to 222222222222"
    );
    let friday_morning = facts(WEEKDAY_MORNINGS, at("09:00") + 86_400);
    let released = policy::decide_commit(
        &project,
        &friday_morning,
        TriggerSource::AutoPoll,
        Some(NEW),
    )
    .unwrap();
    assert!(released.trigger);
    assert_eq!(released.record.as_deref(), Some(NEW));
    assert_eq!(
        released.reason,
        "main moved from 111111111111 to 222222222222; inside allow window \"mornings\" until \
         2026-11-27 12:00 UTC"
    );
}

#[test]
fn an_invalid_config_refuses_every_deploy_and_names_the_problem() {
    let bad = r#"{"windows":[{"kind":"deny","schedule":"0 22 * *","duration":"8h"}]}"#;
    let problem = "sync-windows config, window 1 (\"window 1\"): schedule \"0 22 * *\": \
                   needs 5 fields (minute hour day-of-month month day-of-week), found 4";
    let f = facts(bad, at("12:00"));
    let project = prod(ProjectKind::Compose);

    assert_eq!(
        policy::decide_commit(&project, &f, TriggerSource::AutoPush, Some(NEW)),
        Err(problem.to_string())
    );
    assert_eq!(
        policy::decide_commit(&project, &f, TriggerSource::Manual, Some(NEW)),
        Err(problem.to_string())
    );

    let prior: BTreeMap<String, String> = [("app:1".to_string(), digest('a'))].into();
    let lookups: BTreeMap<String, Lookup> =
        [("app:1".to_string(), Lookup::Digest(digest('b')))].into();
    let d = policy::decide_images(&project, &f, &prior, &lookups);
    assert!(!d.trigger);
    assert_eq!(d.record, prior);
    assert!(d.reason.starts_with(problem), "{}", d.reason);

    for source in [TriggerSource::Manual, TriggerSource::AutoPush] {
        assert_eq!(
            policy::check_deployable(&project, &f, source),
            Verdict::Refused(problem.into())
        );
    }
    assert_eq!(
        policy::check_auto_deploy(&project, &f, true),
        Verdict::Refused(problem.into())
    );
    let off = policy::check_auto_deploy(&project, &f, false);
    assert!(
        off.is_allowed() && off.reason().contains(problem),
        "{off:?}"
    );

    let plan = policy::watch_plan(&project, &f);
    assert!(plan.reason.contains(problem), "{}", plan.reason);
    assert_eq!(
        (plan.poll_commits, plan.reconcile_pushes, plan.watch_images),
        (false, true, true),
        "still watched, so the change deploys once the config is fixed"
    );

    // Not JSON at all.
    let e = policy::decide_commit(
        &project,
        &facts("deny at night", 0),
        TriggerSource::AutoPush,
        Some(NEW),
    )
    .unwrap_err();
    assert!(
        e.starts_with("sync-windows config is not valid JSON"),
        "{e}"
    );
}

#[test]
fn a_time_the_policy_cannot_place_is_an_error_not_a_deploy() {
    let project = prod(ProjectKind::Compose);
    let f = facts(NIGHT_FREEZE, -5);
    assert_eq!(
        policy::decide_commit(&project, &f, TriggerSource::AutoPush, Some(NEW)),
        Err("facts.now_unix_seconds -5 is outside the years 1970 to 9999".into())
    );
    let prior: BTreeMap<String, String> = [("app:1".to_string(), digest('a'))].into();
    let lookups: BTreeMap<String, Lookup> =
        [("app:1".to_string(), Lookup::Digest(digest('b')))].into();
    let d = policy::decide_images(&project, &f, &prior, &lookups);
    assert!(!d.trigger);
    assert_eq!(d.record, prior);
}

#[test]
fn policy_info_names_this_policy() {
    let meta = policy::policy_meta();
    assert_eq!(meta.name, "autodeploy-sync-windows");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
}
