//! Request bodies in `application/vnd.kubernetes.protobuf`, which kubectl 1.33's generators
//! (`kubectl create configmap|secret|namespace|service|deployment|job|cronjob`, `kubectl
//! autoscale`) send whatever discovery says and do not retry as JSON after a 415. A
//! Deployment, Job or CronJob carries a pod template: the pod spec fields skiff runs are
//! understood (a Job made `--from=cronjob/x` copies whatever the CronJob's template holds).
//! Only the messages those generators make are understood,
//! each field by its number in Kubernetes' `generated.proto`; a field not known here makes
//! the body refused (415, naming it) rather than silently dropped. The result is the JSON
//! the same object would have been, which then goes through the one write path.

use serde_json::{Map, Value, json};

/// The 4-byte prefix of a Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    Int,
    Bool,
    Msg(&'static [Field]),
    /// An embedded Go struct: its fields are the parent's in JSON (`Probe.handler`).
    Inline(&'static [Field]),
    MapStr,
    MapBytes,
    /// A pointer integer (`*int32`): sent only when set, so 0 is kept.
    OptInt,
    /// A non-pointer bool (always sent): `false` is the default and dropped.
    PlainBool,
    /// A `resource.Quantity` (a message holding its string).
    Quantity,
    /// `map<string, Quantity>` (resource limits and requests).
    MapQuantity,
    /// Server-owned or status: read past and dropped.
    Skip,
}

#[derive(Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn rep(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
    }
}

const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(4, "selfLink", Ty::Skip),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Skip),
    f(8, "creationTimestamp", Ty::Skip),
    f(9, "deletionTimestamp", Ty::Skip),
    f(10, "deletionGracePeriodSeconds", Ty::Skip),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    rep(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Ty::Str),
    f(17, "managedFields", Ty::Skip),
];

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];

const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
    f(4, "immutable", Ty::Bool),
];

const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapBytes),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::MapStr),
    f(5, "immutable", Ty::Bool),
];

const NAMESPACE_SPEC: &[Field] = &[rep(1, "finalizers", Ty::Str)];

const NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(NAMESPACE_SPEC)),
    f(3, "status", Ty::Skip),
];

/// IntOrString: decoded specially (type, intVal, strVal).
const INT_OR_STRING: &[Field] = &[
    f(1, "type", Ty::Int),
    f(2, "intVal", Ty::Int),
    f(3, "strVal", Ty::Str),
];

const SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::Msg(INT_OR_STRING)),
    f(5, "nodePort", Ty::Int),
    f(6, "appProtocol", Ty::Str),
];

const SERVICE_SPEC: &[Field] = &[
    rep(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", Ty::MapStr),
    f(3, "clusterIP", Ty::Str),
    f(4, "type", Ty::Str),
    rep(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(8, "loadBalancerIP", Ty::Str),
    rep(9, "loadBalancerSourceRanges", Ty::Str),
    f(10, "externalName", Ty::Str),
    f(11, "externalTrafficPolicy", Ty::Str),
    f(12, "healthCheckNodePort", Ty::Int),
    f(13, "publishNotReadyAddresses", Ty::Bool),
    f(17, "ipFamilyPolicy", Ty::Str),
    rep(18, "clusterIPs", Ty::Str),
    rep(19, "ipFamilies", Ty::Str),
    f(20, "allocateLoadBalancerNodePorts", Ty::Bool),
    f(21, "loadBalancerClass", Ty::Str),
    f(22, "internalTrafficPolicy", Ty::Str),
];

const SERVICE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(SERVICE_SPEC)),
    f(3, "status", Ty::Skip),
];

/// resource.Quantity: its one string field, decoded as that string.
const QUANTITY: &[Field] = &[f(1, "string", Ty::Str)];

const CROSS_VERSION_REF: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "name", Ty::Str),
    f(3, "apiVersion", Ty::Str),
];

const METRIC_TARGET: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "value", Ty::Msg(QUANTITY)),
    f(3, "averageValue", Ty::Msg(QUANTITY)),
    f(4, "averageUtilization", Ty::Int),
];

const RESOURCE_METRIC: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "target", Ty::Msg(METRIC_TARGET)),
];

const CONTAINER_RESOURCE_METRIC: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "target", Ty::Msg(METRIC_TARGET)),
    f(3, "container", Ty::Str),
];

/// `kubectl autoscale` makes Resource metrics only; the other sources are refused.
const METRIC_SPEC: &[Field] = &[
    f(1, "type", Ty::Str),
    f(4, "resource", Ty::Msg(RESOURCE_METRIC)),
    f(7, "containerResource", Ty::Msg(CONTAINER_RESOURCE_METRIC)),
];

const HPA_SPEC: &[Field] = &[
    f(1, "scaleTargetRef", Ty::Msg(CROSS_VERSION_REF)),
    f(2, "minReplicas", Ty::Int),
    f(3, "maxReplicas", Ty::Int),
    rep(4, "metrics", Ty::Msg(METRIC_SPEC)),
];

const HPA_V2: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(HPA_SPEC)),
    f(3, "status", Ty::Skip),
];

const LABEL_SELECTOR_REQUIREMENT: &[Field] = &[
    f(1, "key", Ty::Str),
    f(2, "operator", Ty::Str),
    rep(3, "values", Ty::Str),
];

const LABEL_SELECTOR: &[Field] = &[
    f(1, "matchLabels", Ty::MapStr),
    rep(2, "matchExpressions", Ty::Msg(LABEL_SELECTOR_REQUIREMENT)),
];

const LOCAL_OBJECT_REFERENCE: &[Field] = &[f(1, "name", Ty::Str)];

const KEY_TO_PATH: &[Field] = &[
    f(1, "key", Ty::Str),
    f(2, "path", Ty::Str),
    f(3, "mode", Ty::OptInt),
];

const CONFIG_MAP_VOLUME: &[Field] = &[
    f(
        1,
        "localObjectReference",
        Ty::Inline(LOCAL_OBJECT_REFERENCE),
    ),
    rep(2, "items", Ty::Msg(KEY_TO_PATH)),
    f(3, "defaultMode", Ty::OptInt),
    f(4, "optional", Ty::Bool),
];

const SECRET_VOLUME: &[Field] = &[
    f(1, "secretName", Ty::Str),
    rep(2, "items", Ty::Msg(KEY_TO_PATH)),
    f(3, "defaultMode", Ty::OptInt),
    f(4, "optional", Ty::Bool),
];

const EMPTY_DIR_VOLUME: &[Field] = &[f(1, "medium", Ty::Str), f(2, "sizeLimit", Ty::Quantity)];

const HOST_PATH_VOLUME: &[Field] = &[f(1, "path", Ty::Str), f(2, "type", Ty::Str)];

const VOLUME_SOURCE: &[Field] = &[
    f(1, "hostPath", Ty::Msg(HOST_PATH_VOLUME)),
    f(2, "emptyDir", Ty::Msg(EMPTY_DIR_VOLUME)),
    f(6, "secret", Ty::Msg(SECRET_VOLUME)),
    f(19, "configMap", Ty::Msg(CONFIG_MAP_VOLUME)),
];

const VOLUME: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "volumeSource", Ty::Inline(VOLUME_SOURCE)),
];

const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];

const OBJECT_FIELD_SELECTOR: &[Field] = &[f(1, "apiVersion", Ty::Str), f(2, "fieldPath", Ty::Str)];

const RESOURCE_FIELD_SELECTOR: &[Field] = &[
    f(1, "containerName", Ty::Str),
    f(2, "resource", Ty::Str),
    f(3, "divisor", Ty::Quantity),
];

const KEY_SELECTOR: &[Field] = &[
    f(
        1,
        "localObjectReference",
        Ty::Inline(LOCAL_OBJECT_REFERENCE),
    ),
    f(2, "key", Ty::Str),
    f(3, "optional", Ty::Bool),
];

const ENV_VAR_SOURCE: &[Field] = &[
    f(1, "fieldRef", Ty::Msg(OBJECT_FIELD_SELECTOR)),
    f(2, "resourceFieldRef", Ty::Msg(RESOURCE_FIELD_SELECTOR)),
    f(3, "configMapKeyRef", Ty::Msg(KEY_SELECTOR)),
    f(4, "secretKeyRef", Ty::Msg(KEY_SELECTOR)),
];

const ENV_VAR: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "value", Ty::Str),
    f(3, "valueFrom", Ty::Msg(ENV_VAR_SOURCE)),
];

const ENV_SOURCE: &[Field] = &[
    f(
        1,
        "localObjectReference",
        Ty::Inline(LOCAL_OBJECT_REFERENCE),
    ),
    f(2, "optional", Ty::Bool),
];

const ENV_FROM_SOURCE: &[Field] = &[
    f(1, "prefix", Ty::Str),
    f(2, "configMapRef", Ty::Msg(ENV_SOURCE)),
    f(3, "secretRef", Ty::Msg(ENV_SOURCE)),
];

const RESOURCE_REQUIREMENTS: &[Field] = &[
    f(1, "limits", Ty::MapQuantity),
    f(2, "requests", Ty::MapQuantity),
];

const VOLUME_MOUNT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "readOnly", Ty::PlainBool),
    f(3, "mountPath", Ty::Str),
    f(4, "subPath", Ty::Str),
    f(5, "mountPropagation", Ty::Str),
    f(6, "subPathExpr", Ty::Str),
    f(7, "recursiveReadOnly", Ty::Str),
];

const EXEC_ACTION: &[Field] = &[rep(1, "command", Ty::Str)];

const HTTP_HEADER: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)];

const HTTP_GET_ACTION: &[Field] = &[
    f(1, "path", Ty::Str),
    f(2, "port", Ty::Msg(INT_OR_STRING)),
    f(3, "host", Ty::Str),
    f(4, "scheme", Ty::Str),
    rep(5, "httpHeaders", Ty::Msg(HTTP_HEADER)),
];

const TCP_SOCKET_ACTION: &[Field] = &[f(1, "port", Ty::Msg(INT_OR_STRING)), f(2, "host", Ty::Str)];

const PROBE_HANDLER: &[Field] = &[
    f(1, "exec", Ty::Msg(EXEC_ACTION)),
    f(2, "httpGet", Ty::Msg(HTTP_GET_ACTION)),
    f(3, "tcpSocket", Ty::Msg(TCP_SOCKET_ACTION)),
];

const PROBE: &[Field] = &[
    f(1, "handler", Ty::Inline(PROBE_HANDLER)),
    f(2, "initialDelaySeconds", Ty::Int),
    f(3, "timeoutSeconds", Ty::Int),
    f(4, "periodSeconds", Ty::Int),
    f(5, "successThreshold", Ty::Int),
    f(6, "failureThreshold", Ty::Int),
    f(7, "terminationGracePeriodSeconds", Ty::OptInt),
];

const CAPABILITIES: &[Field] = &[rep(1, "add", Ty::Str), rep(2, "drop", Ty::Str)];

const SECCOMP_PROFILE: &[Field] = &[f(1, "type", Ty::Str), f(2, "localhostProfile", Ty::Str)];

const SECURITY_CONTEXT: &[Field] = &[
    f(1, "capabilities", Ty::Msg(CAPABILITIES)),
    f(2, "privileged", Ty::Bool),
    f(4, "runAsUser", Ty::OptInt),
    f(5, "runAsNonRoot", Ty::Bool),
    f(6, "readOnlyRootFilesystem", Ty::Bool),
    f(7, "allowPrivilegeEscalation", Ty::Bool),
    f(8, "runAsGroup", Ty::OptInt),
    f(11, "seccompProfile", Ty::Msg(SECCOMP_PROFILE)),
];

const CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    rep(3, "command", Ty::Str),
    rep(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    rep(6, "ports", Ty::Msg(CONTAINER_PORT)),
    rep(7, "env", Ty::Msg(ENV_VAR)),
    f(8, "resources", Ty::Msg(RESOURCE_REQUIREMENTS)),
    rep(9, "volumeMounts", Ty::Msg(VOLUME_MOUNT)),
    f(10, "livenessProbe", Ty::Msg(PROBE)),
    f(11, "readinessProbe", Ty::Msg(PROBE)),
    f(13, "terminationMessagePath", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(15, "securityContext", Ty::Msg(SECURITY_CONTEXT)),
    f(16, "stdin", Ty::PlainBool),
    f(17, "stdinOnce", Ty::PlainBool),
    f(18, "tty", Ty::PlainBool),
    rep(19, "envFrom", Ty::Msg(ENV_FROM_SOURCE)),
    f(20, "terminationMessagePolicy", Ty::Str),
    f(22, "startupProbe", Ty::Msg(PROBE)),
    f(24, "restartPolicy", Ty::Str),
];

const POD_SECURITY_CONTEXT: &[Field] = &[
    f(2, "runAsUser", Ty::OptInt),
    f(3, "runAsNonRoot", Ty::Bool),
    rep(4, "supplementalGroups", Ty::OptInt),
    f(5, "fsGroup", Ty::OptInt),
    f(6, "runAsGroup", Ty::OptInt),
    f(9, "fsGroupChangePolicy", Ty::Str),
    f(10, "seccompProfile", Ty::Msg(SECCOMP_PROFILE)),
    f(12, "supplementalGroupsPolicy", Ty::Str),
];

const TOLERATION: &[Field] = &[
    f(1, "key", Ty::Str),
    f(2, "operator", Ty::Str),
    f(3, "value", Ty::Str),
    f(4, "effect", Ty::Str),
    f(5, "tolerationSeconds", Ty::OptInt),
];

const POD_SPEC: &[Field] = &[
    rep(1, "volumes", Ty::Msg(VOLUME)),
    rep(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    f(4, "terminationGracePeriodSeconds", Ty::OptInt),
    f(5, "activeDeadlineSeconds", Ty::OptInt),
    f(6, "dnsPolicy", Ty::Str),
    f(7, "nodeSelector", Ty::MapStr),
    f(8, "serviceAccountName", Ty::Str),
    f(9, "serviceAccount", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::PlainBool),
    f(12, "hostPID", Ty::PlainBool),
    f(13, "hostIPC", Ty::PlainBool),
    f(14, "securityContext", Ty::Msg(POD_SECURITY_CONTEXT)),
    rep(15, "imagePullSecrets", Ty::Msg(LOCAL_OBJECT_REFERENCE)),
    f(16, "hostname", Ty::Str),
    f(17, "subdomain", Ty::Str),
    f(19, "schedulerName", Ty::Str),
    rep(20, "initContainers", Ty::Msg(CONTAINER)),
    f(21, "automountServiceAccountToken", Ty::Bool),
    rep(22, "tolerations", Ty::Msg(TOLERATION)),
    f(24, "priorityClassName", Ty::Str),
    f(25, "priority", Ty::OptInt),
    f(27, "shareProcessNamespace", Ty::Bool),
    f(29, "runtimeClassName", Ty::Str),
    f(30, "enableServiceLinks", Ty::Bool),
    f(31, "preemptionPolicy", Ty::Str),
    f(35, "setHostnameAsFQDN", Ty::Bool),
    f(37, "hostUsers", Ty::Bool),
];

const POD_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(POD_SPEC)),
];

const ROLLING_UPDATE_DEPLOYMENT: &[Field] = &[
    f(1, "maxUnavailable", Ty::Msg(INT_OR_STRING)),
    f(2, "maxSurge", Ty::Msg(INT_OR_STRING)),
];

const DEPLOYMENT_STRATEGY: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "rollingUpdate", Ty::Msg(ROLLING_UPDATE_DEPLOYMENT)),
];

const DEPLOYMENT_SPEC: &[Field] = &[
    f(1, "replicas", Ty::OptInt),
    f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
    f(3, "template", Ty::Msg(POD_TEMPLATE_SPEC)),
    f(4, "strategy", Ty::Msg(DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", Ty::Int),
    f(6, "revisionHistoryLimit", Ty::OptInt),
    f(7, "paused", Ty::Bool),
    f(9, "progressDeadlineSeconds", Ty::OptInt),
];

const DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(DEPLOYMENT_SPEC)),
    f(3, "status", Ty::Skip),
];

const JOB_SPEC: &[Field] = &[
    f(1, "parallelism", Ty::OptInt),
    f(2, "completions", Ty::OptInt),
    f(3, "activeDeadlineSeconds", Ty::OptInt),
    f(4, "selector", Ty::Msg(LABEL_SELECTOR)),
    f(5, "manualSelector", Ty::Bool),
    f(6, "template", Ty::Msg(POD_TEMPLATE_SPEC)),
    f(7, "backoffLimit", Ty::OptInt),
    f(8, "ttlSecondsAfterFinished", Ty::OptInt),
    f(9, "completionMode", Ty::Str),
    f(10, "suspend", Ty::Bool),
    f(12, "backoffLimitPerIndex", Ty::OptInt),
    f(13, "maxFailedIndexes", Ty::OptInt),
    f(14, "podReplacementPolicy", Ty::Str),
    f(15, "managedBy", Ty::Str),
];

const JOB: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(JOB_SPEC)),
    f(3, "status", Ty::Skip),
];

const JOB_TEMPLATE_SPEC: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(JOB_SPEC)),
];

const CRON_JOB_SPEC: &[Field] = &[
    f(1, "schedule", Ty::Str),
    f(2, "startingDeadlineSeconds", Ty::OptInt),
    f(3, "concurrencyPolicy", Ty::Str),
    f(4, "suspend", Ty::Bool),
    f(5, "jobTemplate", Ty::Msg(JOB_TEMPLATE_SPEC)),
    f(6, "successfulJobsHistoryLimit", Ty::OptInt),
    f(7, "failedJobsHistoryLimit", Ty::OptInt),
    f(8, "timeZone", Ty::Str),
];

const CRON_JOB: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(CRON_JOB_SPEC)),
    f(3, "status", Ty::Skip),
];

const TYPE_META: &[Field] = &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)];

const UNKNOWN: &[Field] = &[
    f(1, "typeMeta", Ty::Msg(TYPE_META)),
    f(2, "raw", Ty::Bytes),
    f(3, "contentEncoding", Ty::Str),
    f(4, "contentType", Ty::Str),
];

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.data.split_first().ok_or("truncated varint")?;
            self.data = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        if n > self.data.len() {
            return Err("truncated field".into());
        }
        let (b, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(b)
    }

    /// Skips a value of `wire` type.
    fn skip(&mut self, wire: u64) -> Result<(), String> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8),
            2 => self.bytes().map(drop),
            5 => self.take(4),
            w => Err(format!("unsupported wire type {w}")),
        }
    }

    fn take(&mut self, n: usize) -> Result<(), String> {
        if n > self.data.len() {
            return Err("truncated field".into());
        }
        self.data = &self.data[n..];
        Ok(())
    }
}

fn b64(b: &[u8]) -> Value {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b).into()
}

fn decode_map(b: &[u8], bytes_values: bool) -> Result<(String, Value), String> {
    let mut r = Reader { data: b };
    let (mut k, mut v) = (
        String::new(),
        if bytes_values { b64(b"") } else { "".into() },
    );
    while !r.data.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 2) => {
                let raw = r.bytes()?;
                v = if bytes_values {
                    b64(raw)
                } else {
                    String::from_utf8_lossy(raw).into_owned().into()
                };
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

/// A `resource.Quantity` message: its string (field 1).
fn quantity(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader { data: b };
    let mut out = String::new();
    while !r.data.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => out = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (_, w) => r.skip(w)?,
        }
    }
    Ok(out.into())
}

fn decode_quantity_map(b: &[u8]) -> Result<(String, Value), String> {
    let mut r = Reader { data: b };
    let (mut k, mut v) = (String::new(), Value::from(""));
    while !r.data.is_empty() {
        let tag = r.varint()?;
        match (tag >> 3, tag & 7) {
            (1, 2) => k = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 2) => v = quantity(r.bytes()?)?,
            (_, w) => r.skip(w)?,
        }
    }
    Ok((k, v))
}

fn decode(b: &[u8], fields: &'static [Field], path: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    let mut r = Reader { data: b };
    while !r.data.is_empty() {
        let tag = r.varint()?;
        let (num, wire) = (tag >> 3, tag & 7);
        let Some(field) = fields.iter().find(|x| x.num == num) else {
            return Err(format!("field {num} of {path} is not understood"));
        };
        let at = format!("{path}.{}", field.name);
        let value = match field.ty {
            Ty::Skip => {
                r.skip(wire)?;
                continue;
            }
            Ty::Str => {
                let s = String::from_utf8_lossy(r.bytes()?).into_owned();
                if s.is_empty() && !field.repeated {
                    continue;
                }
                Value::String(s)
            }
            Ty::Bytes => b64(r.bytes()?),
            Ty::Int => {
                let v = r.varint()? as i64;
                if v == 0 {
                    continue;
                }
                json!(v)
            }
            Ty::OptInt => json!(r.varint()? as i64),
            Ty::Bool => json!(r.varint()? != 0),
            Ty::PlainBool => {
                if r.varint()? == 0 {
                    continue;
                }
                json!(true)
            }
            Ty::Quantity => quantity(r.bytes()?)?,
            Ty::Inline(inner) => {
                let m = decode(r.bytes()?, inner, &at)?;
                out.extend(m);
                continue;
            }
            Ty::MapQuantity => {
                let (k, v) = decode_quantity_map(r.bytes()?)?;
                if let Some(m) = out
                    .entry(field.name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                {
                    m.insert(k, v);
                }
                continue;
            }
            Ty::Msg(inner) => {
                let m = decode(r.bytes()?, inner, &at)?;
                if std::ptr::eq(inner, QUANTITY) {
                    m.get("string").cloned().unwrap_or(json!("0"))
                } else if std::ptr::eq(inner, INT_OR_STRING) {
                    match m.get("strVal") {
                        Some(s) if m.get("type").is_some_and(|t| t == 1) => s.clone(),
                        _ => m.get("intVal").cloned().unwrap_or(json!(0)),
                    }
                } else {
                    Value::Object(m)
                }
            }
            Ty::MapStr | Ty::MapBytes => {
                let (k, v) = decode_map(r.bytes()?, matches!(field.ty, Ty::MapBytes))?;
                if let Some(m) = out
                    .entry(field.name)
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                {
                    m.insert(k, v);
                }
                continue;
            }
        };
        if field.repeated {
            if let Some(a) = out
                .entry(field.name)
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                a.push(value);
            }
        } else {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(out)
}

/// The JSON of a protobuf-encoded object of the kinds kubectl's generators send.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("not a Kubernetes protobuf body (no k8s magic)")?;
    let envelope = decode(rest, UNKNOWN, "Unknown")?;
    let api_version = envelope
        .pointer_str("typeMeta", "apiVersion")
        .unwrap_or_default();
    let kind = envelope.pointer_str("typeMeta", "kind").unwrap_or_default();
    if envelope.get("contentEncoding").is_some() {
        return Err("encoded protobuf bodies are not understood".into());
    }
    let raw = envelope
        .get("raw")
        .and_then(Value::as_str)
        .map(|s| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s)
        })
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let fields = match (api_version.as_str(), kind.as_str()) {
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "Secret") => SECRET,
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        ("autoscaling/v2", "HorizontalPodAutoscaler") => HPA_V2,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        _ => {
            return Err(format!(
                "{kind} ({api_version}) in protobuf is not understood"
            ));
        }
    };
    let mut obj = decode(&raw, fields, &kind)?;
    obj.insert("apiVersion".into(), api_version.into());
    obj.insert("kind".into(), kind.into());
    Ok(Value::Object(obj))
}

trait PointerStr {
    fn pointer_str(&self, a: &str, b: &str) -> Option<String>;
}

impl PointerStr for Map<String, Value> {
    fn pointer_str(&self, a: &str, b: &str) -> Option<String> {
        self.get(a)?.get(b)?.as_str().map(String::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn kubectl_create_configmap_body_decodes() {
        // What kubectl 1.33 sent for `kubectl create configmap x --from-literal=a=b`.
        let body = hex(
            "6b 38 73 00 0a 0f 0a 02 76 31 12 09 43 6f 6e 66 69 67 4d 61 70 12 1b 0a 11 0a 01 78 12 00 1a 00 \
             22 00 2a 00 32 00 38 00 42 00 12 06 0a 01 61 12 01 62 1a 00 22 00",
        );
        let v = to_json(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn kubectl_create_job_and_cronjob_bodies_decode() {
        // What kubectl 1.33 sent for `kubectl create cronjob tick --image=busybox:1.36
        // --schedule='*/5 * * * *' -- sh -c 'echo tick'`.
        let body = hex(
            "6b 38 73 00 0a 13 0a 08 62 61 74 63 68 2f 76 31 12 07 43 72 6f 6e 4a 6f \
             62 12 bd 01 0a 14 0a 04 74 69 63 6b 12 00 1a 00 22 00 2a 00 32 00 38 00 \
             42 00 12 a2 01 0a 0b 2a 2f 35 20 2a 20 2a 20 2a 20 2a 1a 00 2a 90 01 0a \
             14 0a 04 74 69 63 6b 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 78 32 \
             76 0a 10 0a 00 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 62 12 3b 0a \
             04 74 69 63 6b 12 0c 62 75 73 79 62 6f 78 3a 31 2e 33 36 1a 02 73 68 1a \
             02 2d 63 1a 09 65 63 68 6f 20 74 69 63 6b 2a 00 42 00 6a 00 72 00 80 01 \
             00 88 01 00 90 01 00 a2 01 00 1a 09 4f 6e 46 61 69 6c 75 72 65 32 00 42 \
             00 4a 00 52 00 58 00 60 00 68 00 82 01 00 8a 01 00 9a 01 00 c2 01 00 1a \
             00 1a 00 22 00",
        );
        let v = to_json(&body).unwrap();
        let container = json!({"name": "tick", "image": "busybox:1.36",
            "command": ["sh", "-c", "echo tick"], "resources": {}});
        assert_eq!(
            v,
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
                "spec": {"schedule": "*/5 * * * *", "jobTemplate": {
                    "metadata": {"name": "tick"},
                    "spec": {"template": {"metadata": {}, "spec": {
                        "containers": [container], "restartPolicy": "OnFailure"}}}}}})
        );
        // `kubectl create job hello --image=busybox:1.36 -- echo hi`.
        let body = hex(
            "6b 38 73 00 0a 0f 0a 08 62 61 74 63 68 2f 76 31 12 03 4a 6f 62 12 8f 01 \
             0a 15 0a 05 68 65 6c 6c 6f 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 \
             6c 32 6a 0a 10 0a 00 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 56 12 \
             33 0a 05 68 65 6c 6c 6f 12 0c 62 75 73 79 62 6f 78 3a 31 2e 33 36 1a 04 \
             65 63 68 6f 1a 02 68 69 2a 00 42 00 6a 00 72 00 80 01 00 88 01 00 90 01 \
             00 a2 01 00 1a 05 4e 65 76 65 72 32 00 42 00 4a 00 52 00 58 00 60 00 68 \
             00 82 01 00 8a 01 00 9a 01 00 c2 01 00 1a 08 20 00 28 00 30 00 3a 00 1a \
             00 22 00",
        );
        let v = to_json(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
                "spec": {"template": {"metadata": {}, "spec": {
                    "containers": [{"name": "hello", "image": "busybox:1.36",
                        "command": ["echo", "hi"], "resources": {}}],
                    "restartPolicy": "Never"}}}})
        );
        // `kubectl create job manual --from=cronjob/tick`: the owner reference and the
        // annotation, the template copied from the CronJob's.
        let body = hex(
            "6b 38 73 00 0a 0f 0a 08 62 61 74 63 68 2f 76 31 12 03 4a 6f 62 12 8d 02 \
             0a 86 01 0a 06 6d 61 6e 75 61 6c 12 00 1a 00 22 00 2a 00 32 00 38 00 42 \
             00 62 2b 0a 21 63 72 6f 6e 6a 6f 62 2e 6b 75 62 65 72 6e 65 74 65 73 2e \
             69 6f 2f 69 6e 73 74 61 6e 74 69 61 74 65 12 06 6d 61 6e 75 61 6c 6a 41 \
             0a 07 43 72 6f 6e 4a 6f 62 1a 04 74 69 63 6b 22 24 65 30 36 63 30 38 64 \
             36 2d 31 31 66 65 2d 34 36 63 66 2d 39 30 35 39 2d 61 61 36 63 32 37 61 \
             30 33 38 63 63 2a 08 62 61 74 63 68 2f 76 31 30 01 12 78 32 76 0a 10 0a \
             00 12 00 1a 00 22 00 2a 00 32 00 38 00 42 00 12 62 12 3b 0a 04 74 69 63 \
             6b 12 0c 62 75 73 79 62 6f 78 3a 31 2e 33 36 1a 02 73 68 1a 02 2d 63 1a \
             09 65 63 68 6f 20 74 69 63 6b 2a 00 42 00 6a 00 72 00 80 01 00 88 01 00 \
             90 01 00 a2 01 00 1a 09 4f 6e 46 61 69 6c 75 72 65 32 00 42 00 4a 00 52 \
             00 58 00 60 00 68 00 82 01 00 8a 01 00 9a 01 00 c2 01 00 1a 08 20 00 28 \
             00 30 00 3a 00 1a 00 22 00",
        );
        let v = to_json(&body).unwrap();
        assert_eq!(
            v["metadata"],
            json!({"name": "manual",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "tick",
                    "uid": "e06c08d6-11fe-46cf-9059-aa6c27a038cc", "controller": true}]})
        );
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0], container);
    }

    #[test]
    fn pod_spec_fields_decode_as_their_json() {
        // A container with a pointer integer of 0, a quantity map, an inlined probe handler
        // and a plain bool left false.
        let mut quantity = vec![0x0a, 0x04];
        quantity.extend(b"100m");
        let mut limit = vec![0x0a, 0x03];
        limit.extend(b"cpu");
        limit.push(0x12);
        limit.push(quantity.len() as u8);
        limit.extend(&quantity);
        let mut resources = vec![0x0a, limit.len() as u8];
        resources.extend(&limit);
        // Probe.handler (1) > ProbeHandler.exec (1) > ExecAction.command (1).
        let handler = [0x0a, 0x04, 0x0a, 0x02, b't', b'r'];
        let mut probe = vec![0x0a, handler.len() as u8];
        probe.extend(handler);
        probe.extend([0x10, 0x05]);
        let mut container = vec![0x0a, 0x01, b'c'];
        container.extend([0x42, resources.len() as u8]);
        container.extend(&resources);
        container.extend([0x5a, probe.len() as u8]);
        container.extend(&probe);
        container.extend([0x80, 0x01, 0x00]);
        let m = decode(&container, CONTAINER, "Container").unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"name": "c", "resources": {"limits": {"cpu": "100m"}},
                "readinessProbe": {"exec": {"command": ["tr"]}, "initialDelaySeconds": 5}})
        );
        // backoffLimit 0 is kept (a pointer), parallelism 2.
        let spec = [0x08, 0x02, 0x38, 0x00];
        let m = decode(&spec, JOB_SPEC, "JobSpec").unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"parallelism": 2, "backoffLimit": 0})
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        // Field 9 of the ConfigMap: not in the table.
        let body =
            hex("6b 38 73 00 0a 0f 0a 02 76 31 12 09 43 6f 6e 66 69 67 4d 61 70 12 02 48 01");
        let e = to_json(&body).unwrap_err();
        assert!(e.contains("field 9 of ConfigMap"), "{e}");
        let body = hex("6b 38 73 00 0a 09 0a 02 76 31 12 03 50 6f 64");
        assert!(to_json(&body).unwrap_err().contains("Pod (v1)"));
        assert!(to_json(b"{}").is_err());
    }
}
