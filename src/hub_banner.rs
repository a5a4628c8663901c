//! What `edgetwin hub` prints once it listens, and `edgetwin quickstart --keep-running` once its
//! walkthrough is done: where the hub is, the CA to trust, the console link and the exports that
//! point clients at it.

use edgetwin_hub::HubInfo;

/// The banner's lines, each indented for a block under a heading.
pub fn lines(info: &HubInfo) -> Vec<String> {
    let connection_string = info.service_connection_string.expose();
    let ca = info.ca_certificate.display();
    let mut lines = vec![
        format!("  IoT Hub host name:   {}", info.host_name),
        format!(
            "  MQTT (TLS):          {}:{}",
            info.host_name, info.mqtt_port
        ),
        format!("  service REST API:    {}", info.rest_url),
        format!(
            "  web console:         {} (signs in once, as iothubowner; after that, sign in with the connection string below)",
            info.console_url.expose()
        ),
        format!(
            "  MQTT (WebSockets):   wss://{}:{}/$iothub/websocket",
            info.host_name, info.https_port
        ),
        format!(
            "  AMQP (TLS):          {}:{} (Event Hub-compatible endpoint '{}')",
            info.host_name, info.amqp_port, info.event_hub_name
        ),
        format!(
            "  AMQP (WebSockets):   wss://{host}:{port}/$iothub/websocket (AMQPWSB10), wss://{host}:{port}/$servicebus/websocket (Event Hubs clients)",
            host = info.host_name,
            port = info.https_port
        ),
        format!("  CA certificate:      {ca}"),
    ];
    lines.push(match &info.workload_dir {
        Some(dir) => format!(
            "  workload sockets:    {} (one per edge device in use; see edge-env)",
            dir.display()
        ),
        None => "  workload API:        off (--no-workload-api): a plain IoT Hub".to_owned(),
    });
    lines.extend([
        "  service connection string (iothubowner):".to_owned(),
        format!("    {connection_string}"),
        format!(
            "  Device Provisioning Service: id scope {}, global endpoint {} (same ports; docs/dps.md)",
            info.dps.id_scope, info.dps.global_endpoint
        ),
        "  DPS connection string (provisioningserviceowner):".to_owned(),
        format!("    {}", info.dps.connection_string.expose()),
    ]);
    if info.dps.linked_hubs.len() > 1 {
        let hubs: Vec<String> = (info.dps.linked_hubs.iter())
            .map(|h| format!("{} (weight {})", h.name, h.allocation_weight))
            .collect();
        lines.push(format!("  DPS linked hubs:     {}", hubs.join(", ")));
    }
    lines.extend([
        "  Event Hub-compatible connection string (policy service):".to_owned(),
        format!("    {}", info.event_hub_connection_string.expose()),
        "Point clients at it:".to_owned(),
        format!("  export IOTHUB_CONNECTION_STRING='{connection_string}'"),
        format!("  export REQUESTS_CA_BUNDLE='{ca}'"),
        format!(
            "  a module's IOTEDGE_* environment: eval \"$(edgetwin edge-env --device <d> --module <m> --ca-file {ca})\""
        ),
    ]);
    lines
}
