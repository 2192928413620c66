//! The OpenAPI document against the router it describes.
//!
//! **What catches a forgotten route.** axum cannot list its routes, and a test that only probes
//! the paths it already knows never finds the one nobody told it about. So the coverage test
//! reads the routes out of the real router: `api::app` is the one function that registers
//! routes (everything `router` serves but the web client's fallback), and axum's `Debug` of a
//! `Router` prints every route's path and which methods its `MethodRouter` has. Each
//! (path, method) it serves must be reached by an operation of the document, and each operation
//! must reach a route that serves its method, so a route added without its `#[utoipa::path]`
//! (or an operation left behind by a removed route) fails the test, naming it.
//!
//! Building the router from utoipa-axum's `OpenApiRouter` would tie the two together by
//! construction, but not here: one axum route (`/api/docs/{*name}`) serves eight operations told
//! apart by their suffix, document and file names are wildcards OpenAPI cannot express, and the
//! routes carry their own layers (body limits, timeouts); the router would have to bend to the
//! description. Reading the router keeps it as it is and still fails on any difference.
//!
//! An operation reaches a route the way a request would: its path, with each parameter given a
//! sample value (names with a `/` in them), is matched against the router's paths with axum's
//! rules (a `{param}` takes one segment, a `{*wildcard}` the non-empty rest). The `Debug` format
//! is not an API of axum's: if a version of axum prints it differently, the parse finds no
//! routes or no methods and the test fails, saying so, rather than passing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use utoipa::OpenApi;

use super::ApiDoc;
use crate::api::{app, web_client};

/// The methods a `MethodRouter` prints, in its field names.
const METHODS: [&str; 9] = [
    "get", "head", "delete", "options", "patch", "post", "put", "trace", "connect",
];

/// A sample value for each path parameter of the document, as a client would send it.
fn sample(param: &str) -> &'static str {
    match param {
        "name" => "team/notes.md",
        "path" => "team/builds/app.zip",
        "id" => "7",
        "sub" => "alice",
        "token" => "urn:uuid:0b1c2d3e-4f50-4617-8899-aabbccddeeff",
        other => panic!(
            "path parameter {{{other}}} has no sample value: add one to `sample` in openapi/tests.rs"
        ),
    }
}

/// Every route `api::app` registers: its axum path and the methods it serves.
fn served_routes() -> BTreeMap<String, BTreeSet<String>> {
    let router = app(1024, web_client::Source::new(None));
    let debug = format!("{router:?}");
    // The web client's fallback comes after the API's routes; only those are read.
    let api = debug
        .split(", fallback_router:")
        .next()
        .expect("split yields at least one piece");
    let (routes, paths) = api
        .split_once("node: Node { paths: {")
        .expect("axum's Debug of a Router names its paths; has its format changed?");
    let mut methods_of: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for chunk in routes.split("RouteId(").skip(1) {
        let (id, endpoint) = chunk.split_once("): ").expect("RouteId(n): endpoint");
        let id: u64 = id.parse().expect("a route id is a number");
        assert!(
            endpoint.starts_with("MethodRouter("),
            "route {id} is a service, not a MethodRouter; its methods cannot be read: {endpoint}"
        );
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|method| {
                let field = format!(" {method}: ");
                let Some(at) = endpoint.find(&field) else {
                    panic!("no `{method}` field in {endpoint}; has axum's Debug format changed?")
                };
                !endpoint[at + field.len()..].starts_with("None")
            })
            .map(|method| method.to_string())
            .collect();
        methods_of.insert(id, methods);
    }
    let mut served = BTreeMap::new();
    for chunk in paths.split("RouteId(").skip(1) {
        let (id, rest) = chunk.split_once("): \"").expect("RouteId(n): \"path\"");
        let id: u64 = id.parse().expect("a route id is a number");
        let path = rest.split('"').next().expect("a quoted path");
        let methods = methods_of
            .remove(&id)
            .unwrap_or_else(|| panic!("path {path} names route {id}, which has no endpoint"));
        served.insert(path.to_owned(), methods);
    }
    assert!(
        served.len() >= 20 && served.contains_key("/healthz"),
        "the router's routes were not read (axum's Debug format changed?): {served:?}"
    );
    served
}

/// Whether `route` (axum syntax) matches the concrete `path`.
fn matches(route: &str, path: &str) -> bool {
    let mut path_segments = path.split('/');
    for (i, segment) in route.split('/').enumerate() {
        if segment.starts_with("{*") {
            // The rest of the path, at least one character.
            let rest: Vec<&str> = path_segments.collect();
            return !rest.join("/").is_empty() && i > 0;
        }
        let Some(actual) = path_segments.next() else {
            return false;
        };
        if segment.starts_with('{') {
            if actual.is_empty() {
                return false;
            }
        } else if segment != actual {
            return false;
        }
    }
    path_segments.next().is_none()
}

/// `path` with each `{param}` replaced by its sample value.
fn instantiate(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        out.push_str(sample(&rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn document() -> Value {
    serde_json::from_str(super::document()).expect("the document is JSON")
}

/// Every (path, method) of the document.
fn documented(doc: &Value) -> Vec<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.push((path.clone(), method.to_owned()));
            }
        }
    }
    operations
}

#[test]
fn every_route_of_the_router_is_documented_and_every_operation_is_served() {
    let served = served_routes();
    let doc = document();
    let mut reached: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, method) in documented(&doc) {
        let concrete = instantiate(&path);
        let routes: Vec<&String> = served
            .keys()
            .filter(|route| matches(route, &concrete))
            .collect();
        let [route] = routes.as_slice() else {
            panic!(
                "the documented {method} {path} ({concrete}) reaches {routes:?}, not exactly one route"
            );
        };
        assert!(
            served[*route].contains(&method),
            "{method} {path} is documented, but its route {route} serves only {:?}",
            served[*route]
        );
        reached.insert(((*route).clone(), method));
    }
    for (route, methods) in &served {
        for method in methods {
            assert!(
                reached.contains(&(route.clone(), method.clone())),
                "{} {route} is served but not in the OpenAPI document: put a #[utoipa::path] on \
                 its handler and name the handler in `ApiDoc`'s paths(...)",
                method.to_uppercase()
            );
        }
    }
}

/// The reading of the router itself: a route it does not know is found, and a method taken
/// away is noticed, so the test above cannot pass by reading nothing.
#[test]
fn the_route_reader_sees_every_route_and_method() {
    let served = served_routes();
    let get = BTreeSet::from(["get".to_owned()]);
    assert_eq!(served.get("/healthz"), Some(&get));
    assert_eq!(served.get("/api/openapi.json"), Some(&get));
    assert_eq!(served.get("/ws/{*name}"), Some(&get));
    let file_methods: BTreeSet<String> = ["get", "head", "put", "delete"].map(String::from).into();
    assert_eq!(served.get("/api/files/{*path}"), Some(&file_methods));
    let uploads: BTreeSet<String> = ["head", "patch", "delete", "options"]
        .map(String::from)
        .into();
    assert_eq!(served.get("/api/uploads/{id}"), Some(&uploads));
}

#[test]
fn the_matcher_follows_axum_rules() {
    assert!(matches(
        "/api/docs/{*name}",
        "/api/docs/team/notes.md/covers"
    ));
    assert!(!matches("/api/docs/{*name}", "/api/docs/"));
    assert!(!matches("/api/docs/{*name}", "/api/docs"));
    assert!(matches("/ws/", "/ws/"));
    assert!(!matches("/ws/{*name}", "/ws/"));
    assert!(matches("/api/webhooks/{id}", "/api/webhooks/7"));
    assert!(!matches("/api/webhooks/{id}", "/api/webhooks/7/deliveries"));
    assert!(matches(
        "/api/webhooks/{id}/deliveries",
        "/api/webhooks/7/deliveries"
    ));
    assert!(!matches("/api/users", "/api/users/alice"));
}

#[test]
fn the_document_is_openapi_3_1_with_the_security_schemes() {
    let text = super::document();
    let parsed: utoipa::openapi::OpenApi =
        serde_json::from_str(text).expect("the served document is an OpenAPI document");
    let doc = document();
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(
        parsed.paths.paths.len(),
        ApiDoc::openapi().paths.paths.len()
    );
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    assert_eq!(schemes["token_query"]["type"], "apiKey");
    assert_eq!(schemes["token_query"]["in"], "query");
    assert_eq!(schemes["token_query"]["name"], "token");
    // Either scheme by default; the public endpoints need none.
    assert_eq!(doc["security"].as_array().map(Vec::len), Some(2));
    for (path, method) in [
        ("/healthz", "get"),
        ("/api/openapi.json", "get"),
        ("/api/auth", "get"),
        ("/api/login", "post"),
        ("/ws", "get"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            serde_json::json!([{}]),
            "{method} {path} needs no token"
        );
    }
    // The shared error shape.
    let error = &doc["components"]["schemas"]["Error"];
    assert_eq!(error["properties"]["error"]["type"], "string", "{error}");
    assert_eq!(error["properties"]["message"]["type"], "string", "{error}");
    let required: Vec<&str> = error["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["error", "message"]);
}

/// The parameters of an operation: (name, in, required).
fn parameters(operation: &Value) -> Vec<(String, String, bool)> {
    operation["parameters"]
        .as_array()
        .map(|params| {
            params
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["in"].as_str().unwrap_or_default().to_owned(),
                        p["required"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn operations_have_their_parameters_bodies_and_answers() {
    let doc = document();
    let paths = &doc["paths"];

    // A document name is one path parameter that may hold `/`.
    let covers = &paths["/api/docs/{name}/covers"]["post"];
    assert_eq!(
        parameters(covers),
        [("name".to_owned(), "path".to_owned(), true)]
    );
    let name = &covers["parameters"][0];
    assert!(
        name["description"]
            .as_str()
            .is_some_and(|d| d.contains('/')),
        "{name}"
    );
    assert!(
        covers["requestBody"]["content"]
            .get("application/octet-stream")
            .is_some(),
        "{covers}"
    );
    assert_eq!(
        covers["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Covers"
    );
    assert_eq!(
        covers["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );

    // JSON bodies are the request types themselves.
    let login = &paths["/api/login"]["post"];
    assert_eq!(
        login["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/LoginRequest"
    );
    let login_request = &doc["components"]["schemas"]["LoginRequest"];
    assert_eq!(
        login_request["required"],
        serde_json::json!(["username", "password"])
    );
    let put_user = &paths["/api/users/{sub}"]["put"];
    assert!(
        put_user["responses"].get("201").is_some() && put_user["responses"].get("200").is_some()
    );
    let role = &doc["components"]["schemas"]["Role"];
    assert_eq!(role["enum"], serde_json::json!(["read", "write", "admin"]));

    // Query parameters.
    let history = parameters(&paths["/api/docs/{name}/history"]["get"]);
    assert!(history.contains(&("limit".to_owned(), "query".to_owned(), false)));
    assert!(history.contains(&("before_seq".to_owned(), "query".to_owned(), false)));
    let feed = parameters(&paths["/api/activity"]["get"]);
    for name in ["doc", "prefix", "user", "since", "before", "limit"] {
        assert!(
            feed.contains(&(name.to_owned(), "query".to_owned(), false)),
            "{name} in {feed:?}"
        );
    }
    let restore = parameters(&paths["/api/docs/{name}/versions/{id}/restore"]["post"]);
    assert_eq!(
        restore,
        [
            ("name".to_owned(), "path".to_owned(), true),
            ("id".to_owned(), "path".to_owned(), true)
        ]
    );

    // Files: GET and HEAD share the download; tus headers are parameters.
    let files = &paths["/api/files/{path}"];
    for method in ["get", "head", "put", "delete"] {
        assert!(files.get(method).is_some(), "{method} /api/files/{{path}}");
    }
    assert!(parameters(&files["get"]).contains(&("version".to_owned(), "query".to_owned(), false)));
    let patch = parameters(&paths["/api/uploads/{id}"]["patch"]);
    assert!(patch.contains(&("Upload-Offset".to_owned(), "header".to_owned(), true)));
    assert!(patch.contains(&("Tus-Resumable".to_owned(), "header".to_owned(), true)));
    assert!(
        parameters(&paths["/api/uploads/{id}"]["options"]).contains(&(
            "id".to_owned(),
            "path".to_owned(),
            true
        ))
    );

    // WebSocket upgrades: a GET answered 101, with the JSON refusals.
    for path in ["/ws/{name}", "/ws", "/ws/"] {
        let upgrade = &paths[path]["get"];
        assert!(upgrade["responses"].get("101").is_some(), "{path}");
        assert_eq!(
            upgrade["responses"]["400"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{path}"
        );
    }
    assert_ne!(
        paths["/ws"]["get"]["operationId"],
        paths["/ws/"]["get"]["operationId"]
    );
}

#[test]
fn operation_ids_are_unique_and_summaries_do_not_repeat_the_route() {
    let doc = document();
    let mut ids = BTreeSet::new();
    for (path, method) in documented(&doc) {
        let operation = &doc["paths"][&path][&method];
        let id = operation["operationId"].as_str().expect("an operation id");
        assert!(ids.insert(id.to_owned()), "operation id {id} twice");
        let summary = operation["summary"].as_str().expect("a summary");
        assert!(
            !summary.is_empty() && !summary.starts_with('`') && !summary.contains('\n'),
            "{method} {path}: {summary:?}"
        );
    }
    assert_eq!(
        super::without_route("`GET /api/files`: the current version"),
        "The current version"
    );
    assert_eq!(super::without_route("Liveness."), "Liveness.");
}

/// What OpenAPI asks of every operation and that utoipa does not check: each `{param}` of the
/// path is declared as a path parameter (and nothing else is), and every `$ref` names a
/// component that exists.
#[test]
fn path_parameters_match_the_paths_and_every_reference_resolves() {
    let doc = document();
    for (path, method) in documented(&doc) {
        let operation = &doc["paths"][&path][&method];
        let in_path: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
            .collect();
        let declared: BTreeSet<String> = parameters(operation)
            .into_iter()
            .filter(|(_, location, _)| location == "path")
            .map(|(name, _, required)| {
                assert!(
                    required,
                    "{method} {path}: path parameter {name} is required"
                );
                name
            })
            .collect();
        assert_eq!(in_path, declared, "{method} {path}");
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "{} references", refs.len());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("a reference outside the schemas: {reference}"));
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{reference} does not resolve"
        );
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(reference)) => out.push(reference.clone()),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| collect_refs(value, out)),
        _ => {}
    }
}

/// OpenAPI requires a description on every response; utoipa leaves it out when none is given.
#[test]
fn every_response_has_a_description() {
    let doc = document();
    for (path, method) in documented(&doc) {
        let responses = doc["paths"][&path][&method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no responses"));
        assert!(!responses.is_empty(), "{method} {path} has no responses");
        for (status, response) in responses {
            assert!(
                response["description"].is_string(),
                "{method} {path} {status}: no description"
            );
        }
    }
}
