//! Request bodies in `application/vnd.kubernetes.protobuf`, which kubectl 1.33's generators
//! (`kubectl create configmap|secret|namespace|service|deployment`, `kubectl autoscale`) send whatever discovery says and do
//! not retry as JSON after a 415. Only the messages those generators make are understood,
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
    MapStr,
    MapBytes,
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
    rep(14, "finalizers", Ty::Str),
    f(17, "managedFields", Ty::Skip),
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

const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];

/// Empty in what `kubectl create deployment` sends; limits and requests are not understood.
const RESOURCES: &[Field] = &[];

/// The container fields `kubectl create deployment` sets (and the scalars Go always sends).
const CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    rep(3, "command", Ty::Str),
    rep(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    rep(6, "ports", Ty::Msg(CONTAINER_PORT)),
    f(8, "resources", Ty::Msg(RESOURCES)),
    f(13, "terminationMessagePath", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(16, "stdin", Ty::Bool),
    f(17, "stdinOnce", Ty::Bool),
    f(18, "tty", Ty::Bool),
    f(20, "terminationMessagePolicy", Ty::Str),
];

const POD_SPEC: &[Field] = &[
    rep(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    f(6, "dnsPolicy", Ty::Str),
    f(8, "serviceAccountName", Ty::Str),
    f(9, "serviceAccount", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::Bool),
    f(12, "hostPID", Ty::Bool),
    f(13, "hostIPC", Ty::Bool),
    f(16, "hostname", Ty::Str),
    f(17, "subdomain", Ty::Str),
    f(19, "schedulerName", Ty::Str),
    f(24, "priorityClassName", Ty::Str),
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
    f(1, "replicas", Ty::Int),
    f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
    f(3, "template", Ty::Msg(POD_TEMPLATE_SPEC)),
    f(4, "strategy", Ty::Msg(DEPLOYMENT_STRATEGY)),
    f(5, "minReadySeconds", Ty::Int),
    f(6, "revisionHistoryLimit", Ty::Int),
    f(7, "paused", Ty::Bool),
    f(9, "progressDeadlineSeconds", Ty::Int),
];

const DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(DEPLOYMENT_SPEC)),
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
            Ty::Bool => json!(r.varint()? != 0),
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
