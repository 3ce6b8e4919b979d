//! Root tests for Jobs and CronJobs (issue 11), driven by the real kubectl against a real
//! skiffd in the test's throwaway netns: completions and parallelism, Indexed Jobs, the
//! backoff limit, the active deadline, the TTL after finishing, CronJobs on their schedule
//! with their history limits, `kubectl create job|cronjob` (and `--from=cronjob/x`),
//! `kubectl wait`, `kubectl logs job/x`, the apiserver's messages for bad input, and a Job
//! from the manifest directory.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{IMAGE, require_root};
use serde_json::Value;

use common::kubectl::Kubectl as Api;

/// What these tests ask of kubectl beyond the common calls.
impl Api {
    /// A node with the test image also under the tag [`TAGGED`].
    fn start_batch() -> Api {
        let api = Api::start();
        api.import_tagged("batch");
        api
    }

    /// The pods of a Job (by the label the apiserver puts on its template).
    fn job_pods(&self, job: &str) -> Vec<Value> {
        self.items(&[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
        ])
    }

    fn condition(&self, kind: &str, name: &str, type_: &str) -> Option<Value> {
        let v = self.json(&["get", kind, name]);
        v["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_ && c["status"] == "True")
            .cloned()
    }

    /// The row of `name` in `kubectl get <what>`, split into columns.
    fn row(&self, what: &[&str], name: &str) -> Vec<String> {
        let table = self.ok(&[&["get"], what].concat());
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name} in {table}"));
        line.split_whitespace().map(String::from).collect()
    }
}

/// The test image under a tag other than `latest` ([`TAGGED`]): kubectl's generators set no
/// imagePullPolicy, which for `:latest` would be Always (a pull from nowhere).
const TAGGED: &str = "skiff.test/busybox:batch";

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or_default()
}

/// A Job whose pods run `script` under busybox sh.
fn job(name: &str, spec: &str, script: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, '{script}']
"
    )
}

/// completions 3, parallelism 2: never more than two pods at once, three succeed, the Job is
/// Complete (`kubectl wait`), the table shows it, `kubectl logs job/x` reads a pod, and a
/// delete takes the pods with it. `kubectl create job` makes one that runs too.
#[test]
#[ignore = "needs root"]
fn a_job_runs_its_completions_with_its_parallelism() {
    require_root();
    let api = Api::start_batch();
    let f = api.file(
        "work.yaml",
        &job(
            "work",
            "  completions: 3\n  parallelism: 2",
            "echo done by $HOSTNAME; sleep 2",
        ),
    );
    api.ok(&["apply", "-f", &f]);
    let j = api.json(&["get", "job", "work"]);
    let uid = j["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid.as_str()
    );
    let mut most_running = 0;
    api.until("the Job complete", |a| {
        let pods = a.job_pods("work");
        let running = pods
            .iter()
            .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
            .count();
        most_running = most_running.max(running);
        a.condition("job", "work", "Complete").is_some()
    });
    assert!(most_running <= 2, "{most_running} pods ran at once");
    let out = api.ok(&[
        "wait",
        "--for=condition=complete",
        "job/work",
        "--timeout=30s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    let j = api.json(&["get", "job", "work"]);
    assert_eq!(j["status"]["succeeded"], 3, "{j}");
    assert!(j["status"]["completionTime"].is_string(), "{j}");
    assert_eq!(
        j["status"]["uncountedTerminatedPods"],
        serde_json::json!({}),
        "{j}"
    );
    let pods = api.job_pods("work");
    assert_eq!(pods.len(), 3, "{pods:?}");
    for p in &pods {
        assert_eq!(phase(p), "Succeeded", "{p}");
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Job");
        assert_eq!(owner["uid"], uid.as_str());
        assert_eq!(owner["controller"], true);
        assert!(
            p["metadata"]["name"].as_str().unwrap().starts_with("work-"),
            "{p}"
        );
        // Counted: the tracking finalizer is gone.
        assert!(p["metadata"]["finalizers"].is_null(), "{p}");
    }
    let row = api.row(&["jobs"], "work");
    assert_eq!(&row[1..3], ["Complete", "3/3"], "{row:?}");
    let wide = api.row(&["jobs", "-o", "wide"], "work");
    assert!(wide.contains(&IMAGE.to_string()), "{wide:?}");
    let logs = api.ok(&["logs", "job/work"]);
    assert!(logs.contains("done by work-"), "{logs}");
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=work",
    ]);
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("Completed"), "{events}");

    // kubectl's generator.
    api.ok(&[
        "create",
        "job",
        "hello",
        &format!("--image={TAGGED}"),
        "--",
        "sh",
        "-c",
        "echo hello from a job",
    ]);
    api.until("hello complete", |a| {
        a.condition("job", "hello", "Complete").is_some()
    });
    let logs = api.ok(&["logs", "job/hello"]);
    assert!(logs.contains("hello from a job"), "{logs}");

    api.ok(&["delete", "job", "work"]);
    api.until("the Job's pods gone", |a| a.job_pods("work").is_empty());
    assert_eq!(api.job_pods("hello").len(), 1);
}

/// An Indexed Job: each pod has its index in its annotation, label, hostname and
/// `JOB_COMPLETION_INDEX`, and the status lists the completed indexes.
#[test]
#[ignore = "needs root"]
fn an_indexed_jobs_pods_get_their_index() {
    require_root();
    let api = Api::start_batch();
    let f = api.file(
        "idx.yaml",
        &job(
            "idx",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
            "echo index=$JOB_COMPLETION_INDEX host=$(hostname)",
        ),
    );
    api.ok(&["apply", "-f", &f]);
    api.until("the Indexed Job complete", |a| {
        a.condition("job", "idx", "Complete").is_some()
    });
    let j = api.json(&["get", "job", "idx"]);
    assert_eq!(j["status"]["completedIndexes"], "0-2", "{j}");
    assert_eq!(j["status"]["succeeded"], 3, "{j}");
    let pods = api.job_pods("idx");
    let mut seen = BTreeSet::new();
    for p in &pods {
        let ix = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"],
            ix.as_str()
        );
        let name = p["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with(&format!("idx-{ix}-")), "{name}");
        assert_eq!(p["spec"]["hostname"], format!("idx-{ix}"));
        let logs = api.ok(&["logs", name]);
        assert!(
            logs.contains(&format!("index={ix} host=idx-{ix}")),
            "{name}: {logs}"
        );
        seen.insert(ix);
    }
    assert_eq!(seen, BTreeSet::from(["0".into(), "1".into(), "2".into()]));
}

/// A Job whose pods fail: one retry after the 10 s backoff, then `BackoffLimitExceeded`.
#[test]
#[ignore = "needs root"]
fn a_failing_job_stops_at_its_backoff_limit() {
    require_root();
    let api = Api::start_batch();
    let f = api.file(
        "fail.yaml",
        &job("fail", "  backoffLimit: 1", "echo failing; exit 3"),
    );
    api.ok(&["apply", "-f", &f]);
    api.until("the Job failed", |a| {
        a.condition("job", "fail", "Failed").is_some()
    });
    let c = api.condition("job", "fail", "Failed").unwrap();
    assert_eq!(c["reason"], "BackoffLimitExceeded", "{c}");
    assert_eq!(c["message"], "Job has reached the specified backoff limit");
    let j = api.json(&["get", "job", "fail"]);
    assert_eq!(j["status"]["failed"], 2, "{j}");
    let pods = api.job_pods("fail");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| phase(p) == "Failed"), "{pods:?}");
    // The replacement waited for the pod backoff (10 s after the first failure).
    let ends: Vec<jiff::Timestamp> = pods
        .iter()
        .map(|p| common::ts(&p["metadata"]["creationTimestamp"]))
        .collect();
    let gap = ends[0].duration_since(ends[1]).abs();
    assert!(gap >= jiff::SignedDuration::from_secs(9), "{gap:?}");
    let out = api.ok(&[
        "wait",
        "--for=condition=failed",
        "job/fail",
        "--timeout=10s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    assert_eq!(api.row(&["jobs"], "fail")[1], "Failed");
    let events = api.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=fail",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
}

/// `activeDeadlineSeconds`: the running pod is stopped and the Job fails with
/// `DeadlineExceeded`.
#[test]
#[ignore = "needs root"]
fn the_active_deadline_fails_a_job() {
    require_root();
    let api = Api::start_batch();
    let f = api.file(
        "slow.yaml",
        &job("slow", "  activeDeadlineSeconds: 4", "sleep 3600"),
    );
    api.ok(&["apply", "-f", &f]);
    api.until("a running pod", |a| {
        a.job_pods("slow").iter().any(|p| phase(p) == "Running")
    });
    let started = Instant::now();
    api.until("the Job failed", |a| {
        a.condition("job", "slow", "Failed").is_some()
    });
    let c = api.condition("job", "slow", "Failed").unwrap();
    assert_eq!(c["reason"], "DeadlineExceeded", "{c}");
    assert_eq!(
        c["message"],
        "Job was active longer than specified deadline"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The pod was stopped (deleted), and counted as failed.
    api.until("the pod gone", |a| a.job_pods("slow").is_empty());
    let j = api.json(&["get", "job", "slow"]);
    assert_eq!(j["status"]["failed"], 1, "{j}");
    assert_eq!(j["status"]["active"], 0, "{j}");
}

/// `ttlSecondsAfterFinished`: the finished Job and its pods are deleted.
#[test]
#[ignore = "needs root"]
fn the_ttl_after_finishing_deletes_the_job_and_its_pods() {
    require_root();
    let api = Api::start_batch();
    let f = api.file(
        "brief.yaml",
        &job("brief", "  ttlSecondsAfterFinished: 3", "echo brief"),
    );
    api.ok(&["apply", "-f", &f]);
    api.until("the Job complete", |a| {
        a.condition("job", "brief", "Complete").is_some()
    });
    assert_eq!(api.job_pods("brief").len(), 1);
    api.until("the Job gone", |a| {
        !a.ok(&["get", "jobs"]).contains("brief")
    });
    api.until("its pod gone", |a| a.job_pods("brief").is_empty());
}

fn cron_job_names(api: &Api, cron: &str) -> Vec<Value> {
    api.items(&["get", "jobs"])
        .into_iter()
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| {
                    o.iter()
                        .any(|r| r["name"] == cron && r["kind"] == "CronJob")
                })
        })
        .collect()
}

/// A CronJob made with `kubectl create cronjob` creates its Job on the next minute; Jobs made
/// from it with `kubectl create job --from` are its too, and only the newest finished one is
/// kept (successfulJobsHistoryLimit 1).
#[test]
#[ignore = "needs root"]
fn a_cron_job_runs_on_its_schedule_and_keeps_its_history_limit() {
    require_root();
    let api = Api::start_batch();
    api.ok(&[
        "create",
        "cronjob",
        "tick",
        &format!("--image={TAGGED}"),
        "--schedule=* * * * *",
        "--",
        "sh",
        "-c",
        "echo tick",
    ]);
    api.ok(&[
        "patch",
        "cronjob",
        "tick",
        "--type=merge",
        "-p",
        r#"{"spec":{"successfulJobsHistoryLimit":1}}"#,
    ]);
    let cj = api.json(&["get", "cj", "tick"]);
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    let row = api.row(&["cronjobs"], "tick");
    assert_eq!(
        &row[1..8],
        ["*", "*", "*", "*", "*", "<none>", "False"],
        "{row:?}"
    );

    // By hand, from the CronJob's template.
    api.ok(&["create", "job", "by-hand-1", "--from=cronjob/tick"]);
    let j = api.json(&["get", "job", "by-hand-1"]);
    assert_eq!(
        j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    api.until("by-hand-1 complete", |a| {
        a.condition("job", "by-hand-1", "Complete").is_some()
    });
    api.ok(&["create", "job", "by-hand-2", "--from=cronjob/tick"]);
    api.until("by-hand-2 complete and by-hand-1 cleaned up", |a| {
        let names: Vec<String> = cron_job_names(a, "tick")
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        a.condition("job", "by-hand-2", "Complete").is_some()
            && !names.contains(&"by-hand-1".to_string())
    });
    api.until("by-hand-1's pod gone", |a| {
        a.job_pods("by-hand-1").is_empty()
    });

    // On the schedule, within the next minute.
    api.until_within(75, "a scheduled Job", |a| {
        cron_job_names(a, "tick")
            .iter()
            .any(|j| j["metadata"]["name"] != "by-hand-2")
    });
    let scheduled = cron_job_names(&api, "tick")
        .into_iter()
        .find(|j| j["metadata"]["name"] != "by-hand-2")
        .unwrap();
    let name = scheduled["metadata"]["name"].as_str().unwrap().to_string();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let at =
        scheduled["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap();
    assert_eq!(at.as_second(), minutes * 60);
    api.until("the scheduled Job complete", |a| {
        a.condition("job", &name, "Complete").is_some()
    });
    api.until("only the newest finished Job kept", |a| {
        let jobs = cron_job_names(a, "tick");
        jobs.len() == 1 && jobs[0]["metadata"]["name"] == name.as_str()
    });
    let cj = api.json(&["get", "cj", "tick"]);
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    assert!(cj["status"]["lastSuccessfulTime"].is_string(), "{cj}");
    assert_ne!(api.row(&["cronjobs"], "tick")[9], "<none>");
    let logs = api.ok(&["logs", &format!("job/{name}")]);
    assert!(logs.contains("tick"), "{logs}");

    // Deleting the CronJob takes its Jobs and their pods.
    api.ok(&["delete", "cronjob", "tick"]);
    api.until("the CronJob's Jobs and pods gone", |a| {
        cron_job_names(a, "tick").is_empty() && a.job_pods(&name).is_empty()
    });
}

/// Bad input gets the apiserver's own messages and creates nothing.
#[test]
#[ignore = "needs root"]
fn bad_batch_input_gets_the_apiservers_messages() {
    require_root();
    let api = Api::start_batch();
    let err = api.fails(&[
        "create",
        "cronjob",
        "bad",
        &format!("--image={IMAGE}"),
        "--schedule=61 * * * *",
    ]);
    assert!(
        err.contains(
            "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
        ),
        "{err}"
    );
    let always = api.file(
        "always.yaml",
        &job("always", "  completions: 1", "true").replace("Never", "Always"),
    );
    let err = api.fails(&["apply", "-f", &always]);
    assert!(
        err.contains(
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
        ),
        "{err}"
    );
    let negative = api.file(
        "negative.yaml",
        &job("negative", "  parallelism: -1", "true"),
    );
    let err = api.fails(&["apply", "-f", &negative]);
    assert!(
        err.contains("spec.parallelism: Invalid value: -1: must be greater than or equal to 0"),
        "{err}"
    );
    let out = api.ok(&["get", "jobs,cronjobs"]);
    assert!(!out.contains("always") && !out.contains("bad"), "{out}");

    // A Job's pod template and completions are fixed once created; its labels are not.
    let fixed = api.file(
        "fixed.yaml",
        &job("fixed", "  completions: 1\n  suspend: true", "true"),
    );
    api.ok(&["apply", "-f", &fixed]);
    let err = api.fails(&["set", "image", "job/fixed", "main=other:1"]);
    assert!(
        err.contains("spec.template: Invalid value") && err.contains("field is immutable"),
        "{err}"
    );
    let err = api.fails(&[
        "patch",
        "job",
        "fixed",
        "--type=merge",
        "-p",
        r#"{"spec":{"completions":3}}"#,
    ]);
    assert!(
        err.contains("spec.completions: Invalid value: 3: field is immutable"),
        "{err}"
    );
    api.ok(&["label", "job", "fixed", "team=a"]);
    let j = api.json(&["get", "job", "fixed"]);
    assert_eq!(j["metadata"]["labels"]["team"], "a", "{j}");
    assert_eq!(j["spec"]["completions"], 1, "{j}");
}

/// A Job in the manifest directory runs without kubectl, refuses API writes naming its file,
/// and takes its pods with it when its file goes.
#[test]
#[ignore = "needs root"]
fn a_job_from_the_manifest_directory() {
    require_root();
    let api = Api::start_batch();
    api.node.write_manifest(
        "batch.yaml",
        &job(
            "from-file",
            "  completions: 2\n  parallelism: 2",
            "echo from a file",
        ),
    );
    api.until("the manifest Job complete", |a| {
        a.ok(&["get", "jobs"]).contains("from-file")
            && a.condition("job", "from-file", "Complete").is_some()
    });
    let j = api.json(&["get", "job", "from-file"]);
    let uid = j["metadata"]["uid"].as_str().unwrap();
    assert_eq!(
        j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    assert_eq!(j["status"]["succeeded"], 2, "{j}");
    let pods = api.job_pods("from-file");
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(pods.iter().all(|p| phase(p) == "Succeeded"), "{pods:?}");
    let err = api.fails(&["delete", "job", "from-file"]);
    assert!(err.contains("batch.yaml"), "{err}");
    api.node.remove_manifest("batch.yaml");
    api.until("the manifest Job and its pods gone", |a| {
        !a.ok(&["get", "jobs"]).contains("from-file") && a.job_pods("from-file").is_empty()
    });
}
