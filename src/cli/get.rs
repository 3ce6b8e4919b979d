//! `skiff get pods|events|nodes`.

use jiff::Timestamp;
use k8s_openapi::List;
use k8s_openapi::api::core::v1::{Endpoints, Event, Node, Pod, Service};

use super::client::{Client, encode_component, with_query};
use super::print::events::{events_table, sort_events};
use super::print::nodes::nodes_table;
use super::print::pods::{PodTableOptions, pods_table};
use super::print::services::{endpoints_table, services_table};
use super::{Error, GlobalArgs, out};

/// Arguments of `skiff get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Kind of object: pods (pod, po), services (svc), endpoints (ep), events (ev) or nodes (no).
    #[arg(value_enum)]
    pub resource: Resource,

    /// Name of one object to show.
    pub name: Option<String>,

    /// Output format: wide, json or yaml.
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<OutputFormat>,

    /// Label selector to filter pods, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// Kinds `skiff get` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resource {
    /// Pods.
    #[value(name = "pods", aliases = ["pod", "po"])]
    Pods,
    /// Events.
    #[value(name = "events", aliases = ["event", "ev"])]
    Events,
    /// Nodes.
    #[value(name = "nodes", aliases = ["node", "no"])]
    Nodes,
    /// Services.
    #[value(name = "services", aliases = ["service", "svc"])]
    Services,
    /// Endpoints.
    #[value(name = "endpoints", aliases = ["endpoint", "ep"])]
    Endpoints,
}

/// `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The table with extra columns.
    Wide,
    /// JSON, as the API returns it.
    Json,
    /// YAML, as the API returns it.
    Yaml,
}

/// Runs `skiff get`.
pub async fn run(client: &Client, g: &GlobalArgs, args: GetArgs) -> Result<u8, Error> {
    if args.name.is_some() && args.selector.is_some() {
        return Err(Error::Usage(
            "name cannot be provided when a selector is specified".into(),
        ));
    }
    if args.name.is_some() && g.all_namespaces && args.resource != Resource::Nodes {
        return Err(Error::Usage(
            "a resource cannot be retrieved by name across all namespaces".into(),
        ));
    }
    let now = Timestamp::now();
    match args.resource {
        Resource::Pods => get_pods(client, g, &args, now).await,
        Resource::Events => get_events(client, g, &args, now).await,
        Resource::Nodes => get_nodes(client, &args, now).await,
        Resource::Services => {
            let items: Vec<Service> = get_items(client, g, &args, "services").await?;
            let Some(items) = items_or_printed(items, g, &args)? else {
                return Ok(0);
            };
            let wide = args.output == Some(OutputFormat::Wide);
            out(&services_table(&items, g.all_namespaces, wide, now))?;
            Ok(0)
        }
        Resource::Endpoints => {
            let items: Vec<Endpoints> = get_items(client, g, &args, "endpoints").await?;
            let Some(items) = items_or_printed(items, g, &args)? else {
                return Ok(0);
            };
            out(&endpoints_table(&items, g.all_namespaces, now))?;
            Ok(0)
        }
    }
}

/// One named object or the list, from `/api/v1/.../{plural}`.
async fn get_items<T: serde::de::DeserializeOwned + k8s_openapi::ListableResource>(
    client: &Client,
    g: &GlobalArgs,
    args: &GetArgs,
    plural: &str,
) -> Result<Vec<T>, Error> {
    match &args.name {
        Some(name) => {
            let path = format!("{}/{}", collection_path(g, plural), encode_component(name));
            Ok(vec![client.get_json(&path).await?])
        }
        None => {
            let list: List<T> = client.get_json(&collection_path(g, plural)).await?;
            Ok(list.items)
        }
    }
}

/// Prints `-o json|yaml` output (or "No resources found") and returns None, else the items.
fn items_or_printed<T: serde::Serialize + k8s_openapi::Resource>(
    items: Vec<T>,
    g: &GlobalArgs,
    args: &GetArgs,
) -> Result<Option<Vec<T>>, Error> {
    if args.name.is_some() && items.len() == 1 {
        if let Some(text) = render_object(&items[0], args.output)? {
            out(&text)?;
            return Ok(None);
        }
        return Ok(Some(items));
    }
    if let Some(text) = render_list(&items, args.output)? {
        out(&text)?;
        return Ok(None);
    }
    if items.is_empty() {
        no_resources(g);
        return Ok(None);
    }
    Ok(Some(items))
}

/// `/api/v1/namespaces/{ns}/{plural}`, or `/api/v1/{plural}` with `-A`.
pub(crate) fn collection_path(g: &GlobalArgs, plural: &str) -> String {
    if g.all_namespaces {
        format!("/api/v1/{plural}")
    } else {
        format!(
            "/api/v1/namespaces/{}/{plural}",
            encode_component(&g.namespace)
        )
    }
}

async fn get_pods(
    client: &Client,
    g: &GlobalArgs,
    args: &GetArgs,
    now: Timestamp,
) -> Result<u8, Error> {
    let pods = match &args.name {
        Some(name) => {
            let path = format!("{}/{}", collection_path(g, "pods"), encode_component(name));
            let pod: Pod = client.get_json(&path).await?;
            if let Some(text) = render_object(&pod, args.output)? {
                out(&text)?;
                return Ok(0);
            }
            vec![pod]
        }
        None => {
            let mut query = Vec::new();
            if let Some(sel) = &args.selector {
                query.push(("labelSelector", sel.as_str()));
            }
            let path = with_query(&collection_path(g, "pods"), &query);
            let list: List<Pod> = client.get_json(&path).await?;
            if let Some(text) = render_list(&list.items, args.output)? {
                out(&text)?;
                return Ok(0);
            }
            if list.items.is_empty() {
                no_resources(g);
                return Ok(0);
            }
            list.items
        }
    };
    let opts = PodTableOptions {
        all_namespaces: g.all_namespaces,
        wide: args.output == Some(OutputFormat::Wide),
    };
    out(&pods_table(&pods, opts, now))?;
    Ok(0)
}

async fn get_events(
    client: &Client,
    g: &GlobalArgs,
    args: &GetArgs,
    now: Timestamp,
) -> Result<u8, Error> {
    if let Some(name) = &args.name {
        let path = format!(
            "{}/{}",
            collection_path(g, "events"),
            encode_component(name)
        );
        let event: Event = client.get_json(&path).await?;
        if let Some(text) = render_object(&event, args.output)? {
            out(&text)?;
        } else {
            out(&events_table(&[event], false, now))?;
        }
        return Ok(0);
    }
    let list: List<Event> = client.get_json(&collection_path(g, "events")).await?;
    let mut events = list.items;
    if let Some(text) = render_list(&events, args.output)? {
        out(&text)?;
        return Ok(0);
    }
    if events.is_empty() {
        no_resources(g);
        return Ok(0);
    }
    sort_events(&mut events);
    out(&events_table(&events, g.all_namespaces, now))?;
    Ok(0)
}

async fn get_nodes(client: &Client, args: &GetArgs, now: Timestamp) -> Result<u8, Error> {
    let nodes = match &args.name {
        Some(name) => {
            let node: Node = client
                .get_json(&format!("/api/v1/nodes/{}", encode_component(name)))
                .await?;
            if let Some(text) = render_object(&node, args.output)? {
                out(&text)?;
                return Ok(0);
            }
            vec![node]
        }
        None => {
            let list: List<Node> = client.get_json("/api/v1/nodes").await?;
            if let Some(text) = render_list(&list.items, args.output)? {
                out(&text)?;
                return Ok(0);
            }
            if list.items.is_empty() {
                eprintln!("No resources found");
                return Ok(0);
            }
            list.items
        }
    };
    out(&nodes_table(
        &nodes,
        now,
        args.output == Some(OutputFormat::Wide),
    ))?;
    Ok(0)
}

fn no_resources(g: &GlobalArgs) {
    if g.all_namespaces {
        eprintln!("No resources found");
    } else {
        eprintln!("No resources found in {} namespace.", g.namespace);
    }
}

/// One object as `-o json|yaml`, `None` for table formats.
pub fn render_object<T: serde::Serialize>(
    obj: &T,
    format: Option<OutputFormat>,
) -> Result<Option<String>, Error> {
    match format {
        Some(OutputFormat::Json) => to_json(obj).map(Some),
        Some(OutputFormat::Yaml) => to_yaml(obj).map(Some),
        _ => Ok(None),
    }
}

/// Objects as kubectl's `-o json|yaml` List, `None` for table formats.
pub fn render_list<T: serde::Serialize>(
    items: &[T],
    format: Option<OutputFormat>,
) -> Result<Option<String>, Error> {
    if !matches!(format, Some(OutputFormat::Json | OutputFormat::Yaml)) {
        return Ok(None);
    }
    let items = items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Render {
            format: "json",
            message: e.to_string(),
        })?;
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": ""},
        "items": items,
    });
    render_object(&list, format)
}

fn to_json<T: serde::Serialize>(obj: &T) -> Result<String, Error> {
    // kubectl indents JSON by four spaces.
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    obj.serialize(&mut ser).map_err(|e| Error::Render {
        format: "json",
        message: e.to_string(),
    })?;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    text.push('\n');
    Ok(text)
}

fn to_yaml<T: serde::Serialize>(obj: &T) -> Result<String, Error> {
    serde_yaml_ng::to_string(obj).map_err(|e| Error::Render {
        format: "yaml",
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::print::pods::tests::{pod, running};

    #[test]
    fn list_shape_matches_kubectl() {
        let pods = [pod(
            "web",
            &["app"],
            &[],
            "Running",
            vec![running("app", true, 0)],
            vec![],
        )];
        let json = render_list(&pods, Some(OutputFormat::Json))
            .expect("render")
            .expect("json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "List");
        assert_eq!(v["metadata"]["resourceVersion"], "");
        assert_eq!(v["items"][0]["apiVersion"], "v1");
        assert_eq!(v["items"][0]["kind"], "Pod");
        assert_eq!(v["items"][0]["metadata"]["name"], "web");
        assert!(json.starts_with("{\n    \"apiVersion\""), "{json}");

        let yaml = render_list(&pods, Some(OutputFormat::Yaml))
            .expect("render")
            .expect("yaml");
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
        assert!(yaml.contains("kind: List\n"), "{yaml}");

        assert!(
            render_list(&pods, Some(OutputFormat::Wide))
                .expect("render")
                .is_none()
        );
        assert!(render_list(&pods, None).expect("render").is_none());
    }

    #[test]
    fn single_object_is_not_wrapped() {
        let p = pod("web", &["app"], &[], "Running", vec![], vec![]);
        let yaml = render_object(&p, Some(OutputFormat::Yaml))
            .expect("render")
            .expect("yaml");
        assert!(
            yaml.starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n"),
            "{yaml}"
        );
    }
}
