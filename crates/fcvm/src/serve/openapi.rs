//! `GET /openapi.json`: the OpenAPI 3 document of the REST subset this server speaks — E2B's
//! own paths, bodies and error shape, as far as they are implemented (docs/serve.md lists the
//! SDK calls behind them). Served without an API key: it holds nothing secret.

use axum::Json;
use serde_json::{json, Value};

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn spec() -> Value {
    let id = json!([{"name": "sandboxID", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let err = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let created = json!({"description": "created", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Sandbox"}}}});
    let create = json!({
        "summary": "Create a sandbox",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewSandbox"}}}},
        "responses": {"201": created, "400": err("bad body, timeout or unsupported option"), "401": err("bad API key"), "404": err("unknown template"), "429": err("too many sandboxes"), "500": err("the VM did not start")}
    });
    let list_params = json!([
        {"name": "metadata", "in": "query", "schema": {"type": "string"}, "description": "k=v&k2=v2, keys and values URL-encoded"},
        {"name": "state", "in": "query", "schema": {"type": "string"}, "description": "running,paused"},
        {"name": "nextToken", "in": "query", "schema": {"type": "string"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100}},
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}}
    ]);
    let listed = json!({"description": "the sandboxes", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/ListedSandbox"}}}}});
    let list = json!({"summary": "List sandboxes", "parameters": list_params, "responses": {"200": listed, "400": err("bad query"), "401": err("bad API key")}});
    let connect_body = json!({"content": {"application/json": {"schema": {"type": "object", "properties": {"timeout": {"type": "integer", "minimum": 0, "maximum": 86400, "default": 300}, "memory": {"type": "boolean", "description": "false (reboot from disk) is refused"}}}}}});
    let timeout_body = json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["timeout"], "properties": {"timeout": {"type": "integer", "minimum": 0, "maximum": 86400}}}}}});
    json!({
        "openapi": "3.0.0",
        "info": {"title": "fcvm serve: the E2B sandbox API subset", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
                "NewSandbox": {"type": "object", "properties": {
                    "templateID": {"type": "string", "default": "base"},
                    "timeout": {"type": "integer", "default": 300, "minimum": 0, "maximum": 86400},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
                    "autoPause": {"type": "boolean", "description": "pause instead of kill at the timeout"},
                    "autoPauseMemory": {"type": "boolean", "description": "false (a filesystem-only pause) is refused"}
                }},
                "Sandbox": {"type": "object", "required": ["templateID", "sandboxID", "clientID", "envdVersion"], "properties": {
                    "templateID": {"type": "string"}, "sandboxID": {"type": "string"}, "clientID": {"type": "string"},
                    "envdVersion": {"type": "string"}, "envdAccessToken": {"type": "string"},
                    "trafficAccessToken": {"type": "string", "nullable": true}, "domain": {"type": "string", "nullable": true}
                }},
                "ListedSandbox": {"type": "object", "properties": {
                    "templateID": {"type": "string"}, "sandboxID": {"type": "string"}, "clientID": {"type": "string"},
                    "startedAt": {"type": "string", "format": "date-time"}, "endAt": {"type": "string", "format": "date-time"},
                    "cpuCount": {"type": "integer"}, "memoryMB": {"type": "integer"}, "diskSizeMB": {"type": "integer"},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                    "state": {"type": "string", "enum": ["running", "paused"]}, "envdVersion": {"type": "string"}
                }}
            }
        },
        "security": [{"ApiKeyAuth": []}],
        "paths": {
            "/sandboxes": {"post": create, "get": list},
            "/v2/sandboxes": {"post": create, "get": list},
            "/sandboxes/{sandboxID}": {
                "parameters": id,
                "get": {"summary": "A sandbox", "responses": {"200": {"description": "the sandbox (ListedSandbox with envdAccessToken and domain)"}, "401": err("bad API key"), "404": err("unknown sandbox")}},
                "delete": {"summary": "Kill a sandbox", "responses": {"204": {"description": "killed"}, "401": err("bad API key"), "404": err("unknown sandbox")}}
            },
            "/sandboxes/{sandboxID}/timeout": {
                "parameters": id,
                "post": {"summary": "End the sandbox `timeout` seconds from now", "requestBody": timeout_body, "responses": {"204": {"description": "set"}, "400": err("bad body"), "401": err("bad API key"), "404": err("unknown sandbox")}}
            },
            "/v2/sandboxes/{sandboxID}/connect": {
                "parameters": id,
                "post": {"summary": "Connect to a sandbox: a running one's timeout is extended (never shortened), a paused one is resumed", "requestBody": connect_body, "responses": {"200": created, "201": created, "400": err("bad body; memory: false"), "401": err("bad API key"), "404": err("unknown sandbox"), "500": err("the restore failed")}}
            },
            "/sandboxes/{sandboxID}/pause": {
                "parameters": id,
                "post": {"summary": "Pause: snapshot the VM (memory and files, processes running) and stop it", "responses": {"204": {"description": "paused"}, "400": err("memory: false"), "401": err("bad API key"), "404": err("unknown sandbox"), "409": err("already paused"), "429": err("too many paused sandboxes"), "500": err("the snapshot failed")}}
            },
            "/sandboxes/{sandboxID}/resume": {
                "parameters": id,
                "post": {"summary": "Resume a paused sandbox from its snapshot", "requestBody": connect_body, "responses": {"201": created, "400": err("bad body"), "401": err("bad API key"), "404": err("unknown sandbox"), "409": err("already running"), "500": err("the restore failed")}}
            },
            "/sandboxes/{sandboxID}/fork": {
                "parameters": id,
                "post": {"summary": "Snapshot a running sandbox (it runs on) and start `count` clones of it", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"timeout": {"type": "integer"}, "count": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1}}}}}}, "responses": {"201": {"description": "one {sandbox} or {error} per fork"}, "400": err("bad body"), "401": err("bad API key"), "404": err("unknown sandbox"), "409": err("paused")}}
            },
            "/sandboxes/{sandboxID}/snapshots": {
                "parameters": id,
                "post": {"summary": "Snapshot a running sandbox as a template (its id is a templateID)", "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"name": {"type": "string"}, "memory": {"type": "boolean"}}}}}}, "responses": {"201": {"description": "{snapshotID, names}"}, "400": err("bad body or name; memory: false"), "401": err("bad API key"), "404": err("unknown sandbox"), "409": err("paused"), "429": err("too many snapshots")}}
            },
            "/snapshots": {
                "get": {"summary": "List snapshot templates", "parameters": [
                    {"name": "sandboxID", "in": "query", "schema": {"type": "string"}},
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 64}},
                    {"name": "nextToken", "in": "query", "schema": {"type": "string"}}
                ], "responses": {"200": {"description": "[{snapshotID, names}], the next page's token in x-next-token"}, "400": err("bad query"), "401": err("bad API key")}}
            },
            "/templates/{templateID}": {
                "parameters": [{"name": "templateID", "in": "path", "required": true, "schema": {"type": "string"}}],
                "delete": {"summary": "Delete a snapshot template", "responses": {"204": {"description": "deleted"}, "401": err("bad API key"), "404": err("unknown snapshot")}}
            },
            "/sandboxes/{sandboxID}/metrics": {
                "parameters": id,
                "get": {"summary": "The sandbox's CPU, memory and disk use now: one SandboxMetric (start and end are accepted and ignored: no history is kept)", "responses": {"200": {"description": "[{timestamp, timestampUnix, cpuCount, cpuUsedPct, memUsed, memTotal, memCache, diskUsed, diskTotal}]"}, "401": err("bad API key"), "404": err("unknown sandbox")}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_served_path() {
        let v = super::spec();
        let paths = v["paths"].as_object().unwrap();
        for p in [
            "/sandboxes",
            "/v2/sandboxes",
            "/sandboxes/{sandboxID}",
            "/sandboxes/{sandboxID}/timeout",
            "/sandboxes/{sandboxID}/metrics",
            "/sandboxes/{sandboxID}/pause",
            "/sandboxes/{sandboxID}/resume",
            "/sandboxes/{sandboxID}/fork",
            "/sandboxes/{sandboxID}/snapshots",
        ] {
            assert!(paths.contains_key(p), "{p}");
        }
        assert_eq!(v["openapi"], "3.0.0");
    }
}
