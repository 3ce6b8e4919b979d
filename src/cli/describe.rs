//! `skiff describe pod|node NAME`.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use k8s_openapi::List;
use k8s_openapi::api::core::v1::{Event, Node, Pod};

use super::client::{Client, ClientError, encode_component, with_query};
use super::print::describe_node::describe_node;
use super::print::describe_pod::describe_pod;
use super::{Error, GlobalArgs, out};

/// Arguments of `skiff describe`.
#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    /// Kind of object: pod (pods, po) or node (nodes, no).
    #[arg(value_enum)]
    pub resource: DescribeResource,

    /// Name of the object.
    pub name: String,
}

/// Kinds `skiff describe` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DescribeResource {
    /// A pod, with its containers and events.
    #[value(name = "pod", aliases = ["pods", "po"])]
    Pod,
    /// The node skiffd runs on.
    #[value(name = "node", aliases = ["nodes", "no"])]
    Node,
}

/// Runs `skiff describe`.
pub async fn run(client: &Client, g: &GlobalArgs, args: DescribeArgs) -> Result<u8, Error> {
    match args.resource {
        DescribeResource::Pod => describe_pod_cmd(client, g, &args.name).await,
        DescribeResource::Node => describe_node_cmd(client, &args.name).await,
    }
}

async fn describe_pod_cmd(client: &Client, g: &GlobalArgs, name: &str) -> Result<u8, Error> {
    let ns = encode_component(&g.namespace);
    let pod: Pod = client
        .get_json(&format!(
            "/api/v1/namespaces/{ns}/pods/{}",
            encode_component(name)
        ))
        .await?;
    let selector = format!("involvedObject.name={name}");
    let path = with_query(
        &format!("/api/v1/namespaces/{ns}/events"),
        &[("fieldSelector", &selector)],
    );
    // Like kubectl, a pod is still worth describing when its events cannot be read.
    let events = match client.get_json::<List<Event>>(&path).await {
        Ok(list) => list.items,
        Err(err) => {
            eprintln!("warning: cannot list events: {err}");
            Vec::new()
        }
    };
    // Keep only this pod's events, should the server ignore the field selector.
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name)
                && matches!(
                    e.involved_object.kind.as_deref(),
                    None | Some("Pod") | Some("")
                )
        })
        .collect();
    out(&describe_pod(
        &pod,
        &events,
        Timestamp::now(),
        &TimeZone::system(),
    ))?;
    Ok(0)
}

async fn describe_node_cmd(client: &Client, name: &str) -> Result<u8, Error> {
    let path = format!("/api/v1/nodes/{}", encode_component(name));
    let node: Node = match client.get_json(&path).await {
        Ok(node) => node,
        Err(ClientError::Server(err)) if err.is_not_found() => {
            eprintln!("{err}");
            eprintln!(
                "hint: `skiff get nodes` lists the node skiffd registers, if it serves nodes"
            );
            return Ok(1);
        }
        Err(err) => return Err(err.into()),
    };
    out(&describe_node(&node, &TimeZone::system()))?;
    Ok(0)
}
