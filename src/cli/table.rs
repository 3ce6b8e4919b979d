//! Tables as the apiserver prints them (`kubernetes/pkg/printers/internalversion`): the
//! columns for each kind, with the `-o wide` columns at priority 1, and their cells. This is
//! the one place columns are defined: the API serves them to kubectl as a server-side `Table`
//! (`api::table`, which re-exports this module), and `skiff get` renders the same [`Table`]
//! with [`render`].

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};
use serde_json::{Value, json};

use super::humanize::age;
use super::print::events::last_seen;
use super::print::nodes::{node_roles, node_status};
use super::print::pods::summarize;
use super::print::services::{endpoints_column, ports};
use super::print::{or_none, ts};
use super::tabwriter::{self, KUBECTL_GET};

/// One column: its name as the apiserver spells it, type, format and priority
/// (0: always shown, 1: with `-o wide`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, description: &'static str, priority: u8) -> Column {
    Column {
        name,
        type_: "string",
        format: "",
        description,
        priority,
    }
}

const NAME: Column = Column {
    format: "name",
    ..col("Name", "Name must be unique within a namespace.", 0)
};
const AGE: Column = col(
    "Age",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
    0,
);

const POD_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Ready",
        "The aggregate readiness state of this pod for accepting traffic.",
        0,
    ),
    col(
        "Status",
        "The aggregate status of the containers in this pod.",
        0,
    ),
    col(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
        0,
    ),
    AGE,
    col("IP", "The IP address assigned to this pod.", 1),
    col("Node", "The node this pod is scheduled on.", 1),
    col(
        "Nominated Node",
        "The node the scheduler nominated for this pod.",
        1,
    ),
    col(
        "Readiness Gates",
        "The readiness gates of this pod that are true.",
        1,
    ),
];

const SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col("Type", "The type of the service.", 0),
    col("Cluster-IP", "The cluster IP of the service.", 0),
    col("External-IP", "The external IPs of the service.", 0),
    col("Port(s)", "The ports the service exposes.", 0),
    AGE,
    col("Selector", "The label selector of the service's pods.", 1),
];

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "The ready addresses and ports of the endpoints.",
        0,
    ),
    AGE,
];

const SLICE_COLUMNS: &[Column] = &[
    NAME,
    col("AddressType", "The type of the addresses.", 0),
    col("Ports", "The ports of the slice.", 0),
    col("Endpoints", "The addresses of the slice.", 0),
    AGE,
];

const NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "The status of the node.", 0),
    col("Roles", "The roles of the node.", 0),
    AGE,
    col("Version", "The kubelet version of the node.", 0),
    col("Internal-IP", "The internal IP of the node.", 1),
    col("External-IP", "The external IP of the node.", 1),
    col("OS-Image", "The OS image of the node.", 1),
    col("Kernel-Version", "The kernel version of the node.", 1),
    col("Container-Runtime", "The container runtime of the node.", 1),
];

const EVENT_COLUMNS: &[Column] = &[
    col("Last Seen", "The time the event was last seen.", 0),
    col("Type", "The type of the event.", 0),
    col("Reason", "The reason of the event.", 0),
    col("Object", "The object the event is about.", 0),
    col(
        "Subobject",
        "The field of the object the event is about.",
        1,
    ),
    col("Source", "Who reported the event.", 1),
    col("Message", "The message of the event.", 0),
    col("First Seen", "The time the event was first seen.", 1),
    Column {
        type_: "integer",
        ..col("Count", "How many times the event was seen.", 1)
    },
    Column {
        format: "name",
        ..col("Name", "The name of the event.", 1)
    },
];

const NAMESPACE_COLUMNS: &[Column] = &[NAME, col("Status", "The phase of the namespace.", 0), AGE];

const INT: &str = "integer";

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "Number of the pod with ready state", 0),
    Column {
        type_: INT,
        ..col(
            "Up-to-date",
            "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Available",
            "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            0,
        )
    },
    AGE,
    col("Containers", "Names of each container in the template.", 1),
    col(
        "Images",
        "Images referenced by each container in the template.",
        1,
    ),
    col(
        "Selector",
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
        1,
    ),
];

const REPLICA_SET_COLUMNS: &[Column] = &[
    NAME,
    Column {
        type_: INT,
        ..col("Desired", "Replicas is the number of desired replicas.", 0)
    },
    Column {
        type_: INT,
        ..col(
            "Current",
            "Replicas is the most recently observed number of replicas.",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Ready",
            "The number of ready replicas for this replica set.",
            0,
        )
    },
    AGE,
    col("Containers", "Names of each container in the template.", 1),
    col(
        "Images",
        "Images referenced by each container in the template.",
        1,
    ),
    col(
        "Selector",
        "Label selector for pods. Pods that match this selector are counted.",
        1,
    ),
];

const HPA_COLUMNS: &[Column] = &[
    NAME,
    col("Reference", "reference to scaled resource", 0),
    col("Targets", "the target metrics and their current values", 0),
    Column {
        type_: INT,
        ..col("MinPods", "minimum replicas", 0)
    },
    Column {
        type_: INT,
        ..col("MaxPods", "maximum replicas", 0)
    },
    Column {
        type_: INT,
        ..col("Replicas", "current replicas", 0)
    },
    AGE,
];

fn hpa_cells(o: &Value, now: Timestamp) -> Option<Vec<Value>> {
    let h: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(o.clone()).ok()?;
    let r = &h.spec.scale_target_ref;
    Some(vec![
        name_of(o),
        s(format!("{}/{}", r.kind, r.name)),
        s(crate::workloads::hpa::targets_column(
            &h.spec,
            h.status.as_ref(),
        )),
        h.spec.min_replicas.unwrap_or(1).into(),
        h.spec.max_replicas.into(),
        h.status
            .as_ref()
            .map_or(0, |s| s.current_replicas.unwrap_or(0))
            .into(),
        s(age(created(o), now)),
    ])
}

/// Containers, images and selector of a workload's template (the `-o wide` cells).
fn template_cells(o: &Value) -> [Value; 3] {
    let cs = o["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    [
        s(names.join(",")),
        s(images.join(",")),
        s(crate::selector::workload_selector_text(o)),
    ]
}

fn workload_cells(kind: &str, o: &Value, now: Timestamp) -> Vec<Value> {
    let n = |p: &str| o.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let desired = o
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut cells = if kind == "Deployment" {
        vec![
            name_of(o),
            s(format!("{}/{desired}", n("/status/readyReplicas"))),
            n("/status/updatedReplicas").into(),
            n("/status/availableReplicas").into(),
        ]
    } else {
        vec![
            name_of(o),
            desired.into(),
            n("/status/replicas").into(),
            n("/status/readyReplicas").into(),
        ]
    };
    cells.push(s(age(created(o), now)));
    cells.extend(template_cells(o));
    cells
}

const JOB_SELECTOR: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

const JOB_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "Status of the job.", 0),
    col(
        "Completions",
        "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
        0,
    ),
    col("Duration", "Time required to complete the job.", 0),
    AGE,
    col("Containers", "Names of each container in the template.", 1),
    col(
        "Images",
        "Images referenced by each container in the template.",
        1,
    ),
    col("Selector", JOB_SELECTOR, 1),
];

const CRON_JOB_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Schedule",
        "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
        0,
    ),
    col(
        "Timezone",
        "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process.",
        0,
    ),
    Column {
        type_: "boolean",
        ..col(
            "Suspend",
            "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            0,
        )
    },
    Column {
        type_: INT,
        ..col("Active", "A list of pointers to currently running jobs.", 0)
    },
    col(
        "Last Schedule",
        "Information when was the last time the job was successfully scheduled.",
        0,
    ),
    AGE,
    col("Containers", "Names of each container in the template.", 1),
    col(
        "Images",
        "Images referenced by each container in the template.",
        1,
    ),
    col("Selector", JOB_SELECTOR, 1),
];

/// `metav1.FormatLabelSelector`: `<none>` for no selector.
fn label_selector_text(sel: &Value) -> String {
    let text = serde_json::from_value(sel.clone())
        .ok()
        .and_then(|ls| crate::selector::Selector::from_label_selector(&ls).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    if sel.is_null() || text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

/// Containers and images of a pod template (the `-o wide` cells).
fn containers_cells(template: &Value) -> [Value; 2] {
    let cs = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c["image"].as_str()).collect();
    [s(names.join(",")), s(images.join(","))]
}

/// A Job's row (`printJob`).
fn job_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = o["status"]["succeeded"].as_i64().unwrap_or(0);
    let completions = match o["spec"]["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => match o["spec"]["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    };
    let time = |f: &str| {
        o["status"][f]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    let duration = match (time("startTime"), time("completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => age(Some(start), now),
        (Some(start), Some(end)) => crate::cli::humanize::kube_duration(end.duration_since(start)),
    };
    let has = |t: &str| {
        o["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    let status = if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if !o["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let mut cells = vec![
        name_of(o),
        s(status),
        s(completions),
        s(duration),
        s(age(created(o), now)),
    ];
    cells.extend(containers_cells(&o["spec"]["template"]));
    cells.push(s(label_selector_text(&o["spec"]["selector"])));
    cells
}

/// A CronJob's row (`printCronJob`).
fn cron_job_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let spec = &o["spec"];
    let last = o["status"]["lastScheduleTime"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| age(Some(t), now))
        .unwrap_or_else(|| "<none>".into());
    let suspend = match spec["suspend"].as_bool() {
        None => "<unset>",
        Some(true) => "True",
        Some(false) => "False",
    };
    let active = o["status"]["active"].as_array().map_or(0, Vec::len) as i64;
    let template = &spec["jobTemplate"]["spec"];
    let mut cells = vec![
        name_of(o),
        s(spec["schedule"].as_str().unwrap_or_default()),
        s(spec["timeZone"].as_str().unwrap_or("<none>")),
        s(suspend),
        active.into(),
        s(last),
        s(age(created(o), now)),
    ];
    cells.extend(containers_cells(&template["template"]));
    cells.push(s(label_selector_text(&template["selector"])));
    cells
}

const DAEMON_SET_COLUMNS: &[Column] = &[
    NAME,
    Column {
        type_: INT,
        ..col(
            "Desired",
            "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Current",
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Ready",
            "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Up-to-date",
            "The total number of nodes that are running updated daemon pod",
            0,
        )
    },
    Column {
        type_: INT,
        ..col(
            "Available",
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
            0,
        )
    },
    col(
        "Node Selector",
        "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
        0,
    ),
    AGE,
    col("Containers", "Names of each container in the template.", 1),
    col(
        "Images",
        "Images referenced by each container in the template.",
        1,
    ),
    col(
        "Selector",
        "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
        1,
    ),
];

/// A DaemonSet's row (`printDaemonSet`).
fn daemon_set_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let n = |f: &str| Value::from(o["status"][f].as_i64().unwrap_or(0));
    let node_selector = o["spec"]["template"]["spec"]["nodeSelector"]
        .as_object()
        .filter(|m| !m.is_empty())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_else(|| "<none>".into());
    let mut cells = vec![
        name_of(o),
        n("desiredNumberScheduled"),
        n("currentNumberScheduled"),
        n("numberReady"),
        n("updatedNumberScheduled"),
        n("numberAvailable"),
        s(node_selector),
        s(age(created(o), now)),
    ];
    cells.extend(containers_cells(&o["spec"]["template"]));
    cells.push(s(label_selector_text(&o["spec"]["selector"])));
    cells
}

const CONTROLLER_REVISION_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Controller",
        "Controller of the object, in the form kind.group/name.",
        0,
    ),
    Column {
        type_: INT,
        ..col(
            "Revision",
            "Revision indicates the revision of the state represented by Data.",
            0,
        )
    },
    AGE,
];

/// A ControllerRevision's row (`printControllerRevision`): its controller as
/// `kind.group/name`, `<none>` without one.
fn controller_revision_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let controller = o["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
        .map(|r| {
            let group = r["apiVersion"]
                .as_str()
                .and_then(|v| v.split_once('/'))
                .map(|(g, _)| g)
                .unwrap_or_default();
            let kind = r["kind"].as_str().unwrap_or_default().to_lowercase();
            let name = r["name"].as_str().unwrap_or_default();
            if group.is_empty() {
                format!("{kind}/{name}")
            } else {
                format!("{kind}.{group}/{name}")
            }
        })
        .unwrap_or_else(|| "<none>".into());
    vec![
        name_of(o),
        s(controller),
        o["revision"].as_i64().unwrap_or(0).into(),
        s(age(created(o), now)),
    ]
}

/// What the apiserver prints for a kind it has no printer for.
const DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

/// One row: its cells (strings or integers) and the object's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cells: Vec<Value>,
    /// The row's object as served (`includeObject=Object`); its metadata is used otherwise.
    pub object: Value,
}

/// A table of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: &'static [Column],
    pub rows: Vec<Row>,
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn created(obj: &Value) -> Option<Timestamp> {
    obj["metadata"]["creationTimestamp"].as_str()?.parse().ok()
}

fn name_of(obj: &Value) -> Value {
    s(obj["metadata"]["name"].as_str().unwrap_or_default())
}

/// Rows for `objects` of `kind` (as served: JSON with apiVersion and kind); kinds without a
/// printer get Name and Age.
pub fn for_kind(kind: &str, objects: Vec<Value>, now: Timestamp) -> Table {
    let typed = |f: &dyn Fn(&Value) -> Option<Vec<Value>>, columns: &'static [Column]| Table {
        columns,
        rows: objects
            .iter()
            .map(|o| Row {
                cells: f(o).unwrap_or_else(|| {
                    let mut cells = vec![name_of(o)];
                    cells.resize(columns.len(), s("<unknown>"));
                    cells
                }),
                object: o.clone(),
            })
            .collect(),
    };
    match kind {
        "Pod" => typed(
            &|o| Some(pod_cells(&serde_json::from_value(o.clone()).ok()?, now)),
            POD_COLUMNS,
        ),
        "Service" => typed(
            &|o| Some(service_cells(&serde_json::from_value(o.clone()).ok()?, now)),
            SERVICE_COLUMNS,
        ),
        "Endpoints" => typed(
            &|o| {
                Some(endpoints_cells(
                    &serde_json::from_value(o.clone()).ok()?,
                    now,
                ))
            },
            ENDPOINTS_COLUMNS,
        ),
        "EndpointSlice" => typed(&|o| Some(slice_cells(o, now)), SLICE_COLUMNS),
        "Node" => typed(
            &|o| Some(node_cells(&serde_json::from_value(o.clone()).ok()?, now)),
            NODE_COLUMNS,
        ),
        "Event" => typed(
            &|o| Some(event_cells(&serde_json::from_value(o.clone()).ok()?, now)),
            EVENT_COLUMNS,
        ),
        "Namespace" => typed(
            &|o| {
                Some(vec![
                    name_of(o),
                    s(o["status"]["phase"].as_str().unwrap_or("Active")),
                    s(age(created(o), now)),
                ])
            },
            NAMESPACE_COLUMNS,
        ),
        "Deployment" => typed(
            &|o| Some(workload_cells("Deployment", o, now)),
            DEPLOYMENT_COLUMNS,
        ),
        "HorizontalPodAutoscaler" => typed(&|o| hpa_cells(o, now), HPA_COLUMNS),
        "ReplicaSet" | "ReplicationController" => {
            typed(&|o| Some(workload_cells(kind, o, now)), REPLICA_SET_COLUMNS)
        }
        "Job" => typed(&|o| Some(job_cells(o, now)), JOB_COLUMNS),
        "CronJob" => typed(&|o| Some(cron_job_cells(o, now)), CRON_JOB_COLUMNS),
        "DaemonSet" => typed(&|o| Some(daemon_set_cells(o, now)), DAEMON_SET_COLUMNS),
        "ControllerRevision" => typed(
            &|o| Some(controller_revision_cells(o, now)),
            CONTROLLER_REVISION_COLUMNS,
        ),
        _ => typed(
            &|o| Some(vec![name_of(o), s(age(created(o), now))]),
            DEFAULT_COLUMNS,
        ),
    }
}

fn typed_rows<T: serde::Serialize>(
    columns: &'static [Column],
    items: &[T],
    cells: impl Fn(&T) -> Vec<Value>,
) -> Table {
    Table {
        columns,
        rows: items
            .iter()
            .map(|o| Row {
                cells: cells(o),
                object: serde_json::to_value(o).unwrap_or_default(),
            })
            .collect(),
    }
}

/// The pods table.
pub fn pods(items: &[Pod], now: Timestamp) -> Table {
    typed_rows(POD_COLUMNS, items, |p| pod_cells(p, now))
}

/// The services table.
pub fn services(items: &[Service], now: Timestamp) -> Table {
    typed_rows(SERVICE_COLUMNS, items, |x| service_cells(x, now))
}

/// The endpoints table.
pub fn endpoints(items: &[Endpoints], now: Timestamp) -> Table {
    typed_rows(ENDPOINTS_COLUMNS, items, |x| endpoints_cells(x, now))
}

/// The nodes table.
pub fn nodes(items: &[Node], now: Timestamp) -> Table {
    typed_rows(NODE_COLUMNS, items, |x| node_cells(x, now))
}

/// The events table.
pub fn events(items: &[Event], now: Timestamp) -> Table {
    typed_rows(EVENT_COLUMNS, items, |x| event_cells(x, now))
}

/// The pod columns, as `printPod` computes them.
pub fn pod_cells(pod: &Pod, now: Timestamp) -> Vec<Value> {
    let sum = summarize(pod);
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let ip = status
        .and_then(|s| s.pod_ips.as_ref())
        .and_then(|ips| ips.first())
        .map(|ip| ip.ip.as_str())
        .or_else(|| status.and_then(|s| s.pod_ip.as_deref()));
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let nominated = status.and_then(|s| s.nominated_node_name.as_deref());
    let gates = pod
        .spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .filter(|g| !g.is_empty())
        .map(|gates| {
            let conditions = status.and_then(|s| s.conditions.as_ref());
            let ready = gates
                .iter()
                .filter(|g| {
                    conditions
                        .into_iter()
                        .flatten()
                        .any(|c| c.type_ == g.condition_type && c.status == "True")
                })
                .count();
            format!("{ready}/{}", gates.len())
        });
    vec![
        s(meta.name.as_deref().unwrap_or_default()),
        s(sum.ready_column()),
        s(sum.status.clone()),
        s(sum.restarts_column(now)),
        s(age(ts(meta.creation_timestamp.as_ref()), now)),
        s(or_none(ip)),
        s(or_none(node)),
        s(or_none(nominated)),
        s(gates.as_deref().unwrap_or("<none>")),
    ]
}

fn service_cells(svc: &Service, now: Timestamp) -> Vec<Value> {
    let spec = svc.spec.clone().unwrap_or_default();
    let type_ = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    let external = match type_.as_str() {
        "ExternalName" => spec.external_name.clone().unwrap_or_default(),
        _ => {
            let ips = spec.external_ips.clone().unwrap_or_default();
            if !ips.is_empty() {
                ips.join(",")
            } else if type_ == "LoadBalancer" {
                "<pending>".into()
            } else {
                "<none>".into()
            }
        }
    };
    let selector: Vec<String> = spec
        .selector
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    vec![
        s(svc.metadata.name.as_deref().unwrap_or_default()),
        s(type_),
        s(spec
            .cluster_ip
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")),
        s(external),
        s(ports(svc)),
        s(age(ts(svc.metadata.creation_timestamp.as_ref()), now)),
        s(if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector.join(",")
        }),
    ]
}

fn endpoints_cells(ep: &Endpoints, now: Timestamp) -> Vec<Value> {
    vec![
        s(ep.metadata.name.as_deref().unwrap_or_default()),
        s(endpoints_column(ep)),
        s(age(ts(ep.metadata.creation_timestamp.as_ref()), now)),
    ]
}

/// EndpointSlice columns from its JSON (skiff serves slices as views, not typed objects).
fn slice_cells(o: &Value, now: Timestamp) -> Vec<Value> {
    let ports: Vec<String> = o["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_i64().map(|n| n.to_string()))
        .collect();
    let mut addrs: Vec<String> = o["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let endpoints = if addrs.is_empty() {
        "<none>".to_string()
    } else if addrs.len() > 3 {
        let more = addrs.len() - 3;
        addrs.truncate(3);
        format!("{} + {more} more...", addrs.join(","))
    } else {
        addrs.join(",")
    };
    vec![
        name_of(o),
        s(o["addressType"].as_str().unwrap_or_default()),
        s(if ports.is_empty() {
            "<unset>".to_string()
        } else {
            ports.join(",")
        }),
        s(endpoints),
        s(age(created(o), now)),
    ]
}

fn node_cells(node: &Node, now: Timestamp) -> Vec<Value> {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    let address = |kind: &str| {
        node.status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == kind))
            .map_or("<none>".to_owned(), |a| a.address.clone())
    };
    let field = |f: fn(&k8s_openapi::api::core::v1::NodeSystemInfo) -> &str| {
        info.map(f)
            .filter(|v| !v.is_empty())
            .unwrap_or("<unknown>")
            .to_owned()
    };
    vec![
        s(node.metadata.name.as_deref().unwrap_or_default()),
        s(node_status(node)),
        s(node_roles(node)),
        s(age(ts(node.metadata.creation_timestamp.as_ref()), now)),
        s(info.map(|i| i.kubelet_version.as_str()).unwrap_or_default()),
        s(address("InternalIP")),
        s(address("ExternalIP")),
        s(field(|i| &i.os_image)),
        s(field(|i| &i.kernel_version)),
        s(field(|i| &i.container_runtime_version)),
    ]
}

fn event_cells(e: &Event, now: Timestamp) -> Vec<Value> {
    let obj = &e.involved_object;
    let kind = obj.kind.as_deref().unwrap_or_default().to_lowercase();
    let target = match obj.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{kind}/{name}"),
        _ => kind,
    };
    let source = e
        .source
        .as_ref()
        .map(
            |src| match (src.component.as_deref(), src.host.as_deref()) {
                (Some(c), Some(h)) if !h.is_empty() => format!("{c}, {h}"),
                (Some(c), _) => c.to_string(),
                _ => String::new(),
            },
        )
        .unwrap_or_default();
    let first =
        ts(e.first_timestamp.as_ref()).or_else(|| ts(e.metadata.creation_timestamp.as_ref()));
    vec![
        s(age(last_seen(e), now)),
        s(e.type_.as_deref().unwrap_or_default()),
        s(e.reason.as_deref().unwrap_or_default()),
        s(target),
        s(obj.field_path.clone().unwrap_or_default()),
        s(source),
        s(e.message
            .as_deref()
            .unwrap_or_default()
            .trim()
            .replace(['\n', '\t'], " ")),
        s(age(first, now)),
        json!(e.count.unwrap_or(1)),
        s(e.metadata.name.as_deref().unwrap_or_default()),
    ]
}

/// Renders a table as text the way kubectl prints a server-side Table: upper-case headers,
/// NAMESPACE first with `all_namespaces`, priority-1 columns only with `wide`.
pub fn render(table: &Table, all_namespaces: bool, wide: bool) -> String {
    let shown: Vec<usize> = (0..table.columns.len())
        .filter(|&i| wide || table.columns[i].priority == 0)
        .collect();
    let mut text = String::new();
    let mut header: Vec<String> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".into());
    }
    header.extend(shown.iter().map(|&i| table.columns[i].name.to_uppercase()));
    text.push_str(&header.join("\t"));
    text.push('\n');
    for row in &table.rows {
        let mut cells: Vec<String> = Vec::new();
        if all_namespaces {
            cells.push(
                row.object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        for &i in &shown {
            cells.push(match row.cells.get(i) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            });
        }
        text.push_str(&cells.join("\t"));
        text.push('\n');
    }
    tabwriter::align(&text, KUBECTL_GET)
}
