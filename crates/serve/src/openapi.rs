//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated with `utoipa` from the types
//! the handlers use: the request bodies of [`crate::openai`], the responses of
//! [`crate::response`], each handler's `#[utoipa::path]`. Nothing here is written by hand but
//! the schemas of fields serde reads as a raw `Value` (a prompt in four shapes,
//! `response_format`) and the OpenAI fields [`crate::openai`] refuses, which come from the same
//! table its check reads. The limits that depend on the served model and `serve.toml` (token ids
//! below the vocabulary size, `n` up to `max_n`) are filled in per server ([`document`]).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, OneOfBuilder, Ref, Schema, SchemaType,
    Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::app::AppState;
use crate::openai::{CHAT_UNSUPPORTED, COMPLETION_UNSUPPORTED, Unsupported};
use crate::response::ErrorResponse;
use crate::routes::{chat, completions, embeddings, health, models, tokenize};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferrotune serve",
        description = "OpenAI-compatible API (chat, completions, embeddings, models) with vLLM's \
            adapter and tokenizer endpoints. Every failure answers with OpenAI's error body \
            (`ErrorResponse`). OpenAI fields this server cannot honour are listed in the request \
            schemas with the only values it accepts; any other value is refused with a 400 naming \
            the field."
    ),
    paths(
        chat::chat_completions,
        completions::completions,
        embeddings::embeddings,
        models::list,
        models::load_adapter,
        models::unload_adapter,
        tokenize::tokenize,
        tokenize::detokenize,
        health::health,
        health::ready,
        health::metrics,
        openapi_json,
    ),
    components(schemas(
        ErrorResponse,
        crate::openai::ChatRequest,
        crate::openai::SamplingFields,
        crate::openai::CompletionRequest,
        ChatCompletionBody,
        CompletionBody,
        crate::response::ChatCompletionChunk,
        crate::response::CompletionChunk,
    )),
    modifiers(&BearerKeys),
)]
pub struct ApiDoc;

/// The auth scheme: `Authorization: Bearer <key>` with a key from `ferrotune keys create`.
struct BearerKeys;

/// The name the paths' `security(...)` refer to.
pub const BEARER: &str = "api_key";

impl utoipa::Modify for BearerKeys {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some("An API key from `ferrotune keys create` (`ft-…`).".into());
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(http));
    }
}

/// This server's document: [`ApiDoc`] with the served model's vocabulary and `max_n` filled in.
pub fn document(vocab_size: usize, max_n: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    camel_case_links(&mut doc);
    sse_events(&mut doc);
    let schemas = &mut doc["components"]["schemas"];
    schemas["SamplingFields"]["properties"]["n"]["maximum"] = max_n.into();
    let last_id = Value::from(vocab_size.saturating_sub(1));
    for id in token_ids(&mut schemas["CompletionRequest"]["properties"]["prompt"]) {
        id["maximum"] = last_id.clone();
    }
    for id in token_ids(&mut schemas["DetokenizeRequest"]["properties"]["tokens"]) {
        id["maximum"] = last_id.clone();
    }
    doc
}

/// utoipa 5.5 writes a Link object's fields in snake case (`operation_id`, `request_body`), which
/// OpenAPI tools do not read as links; rename them as the specification spells them.
fn camel_case_links(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    let links = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| r.get_mut("links").and_then(Value::as_object_mut))
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(snake) {
                link.insert(camel.to_string(), v);
            }
        }
    }
}

/// A `text/event-stream` answer is declared with the schema of its chunks; OpenAPI 3.1 wants the
/// schema of one event there (`{"data": …}`), the chunk being its `data` as JSON
/// (`contentSchema`), or `[DONE]`, or OpenAI's error body when a stream fails after it started.
/// (utoipa has no `contentSchema`, hence this pass over the document.)
fn sse_events(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    let streams = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|r| r.pointer_mut("/content/text~1event-stream/schema"));
    for schema in streams {
        let chunk = schema.take();
        let error = serde_json::json!({"$ref": format!("#/components/schemas/{}", ErrorResponse::name())});
        *schema = serde_json::json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string"},
                "id": {"type": "string"},
                "data": {"anyOf": [
                    {"const": "[DONE]"},
                    {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"oneOf": [chunk, error]},
                    },
                ]},
            },
        });
    }
}

/// The integer schemas (token ids) anywhere inside `schema`.
fn token_ids(schema: &mut Value) -> Vec<&mut Value> {
    let is_int = |v: &Value| match &v["type"] {
        Value::String(t) => t == "integer",
        Value::Array(ts) => ts.iter().any(|t| t == "integer"),
        _ => false,
    };
    if is_int(schema) {
        return vec![schema];
    }
    match schema {
        Value::Object(m) => m.values_mut().flat_map(token_ids).collect(),
        Value::Array(a) => a.iter_mut().flat_map(token_ids).collect(),
        _ => vec![],
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "server",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(state.engine.info().vocab_size, state.cfg.max_n))
}

/// Every error status a route may answer with, each with OpenAI's error body.
pub struct Failures;

impl utoipa::IntoResponses for Failures {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "A field is invalid or refused; `param` names it"),
            ("401", "Missing or invalid API key"),
            ("403", "The key may not use this model, knowledge base, field or endpoint"),
            ("404", "No such model, adapter or knowledge base"),
            ("409", "A registry version that cannot be served on this base"),
            ("413", "The body is larger than `max_body_bytes`"),
            ("415", "A POST without `Content-Type: application/json`"),
            ("429", "A rate or concurrency limit; see `Retry-After`"),
            ("500", "An internal error (logged; the body says nothing more)"),
            ("503", "Queue full, shutting down, or a registry file failed its integrity check"),
            ("504", "The request ran past `request_timeout_s`"),
        ]
        .into_iter()
        .map(|(status, what)| (status.to_string(), error_response(what)))
        .collect()
    }
}

pub(crate) fn error_response(description: &str) -> RefOr<Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorResponse::name()))).build(),
        )
        .into()
}

// ---- bodies serde reads in parts ----

/// The body of `POST /v1/chat/completions`: [`crate::openai::ChatRequest`],
/// [`crate::openai::SamplingFields`] and the OpenAI fields refused unless at a no-op value.
pub struct ChatCompletionBody;

impl PartialSchema for ChatCompletionBody {
    fn schema() -> RefOr<Schema> {
        body_of("ChatRequest", CHAT_UNSUPPORTED)
    }
}

impl ToSchema for ChatCompletionBody {}

/// The body of `POST /v1/completions`, as [`ChatCompletionBody`].
pub struct CompletionBody;

impl PartialSchema for CompletionBody {
    fn schema() -> RefOr<Schema> {
        body_of("CompletionRequest", COMPLETION_UNSUPPORTED)
    }
}

impl ToSchema for CompletionBody {}

fn body_of(own: &str, refused: &[Unsupported]) -> RefOr<Schema> {
    let mut fields = ObjectBuilder::new().schema_type(Type::Object);
    for u in refused {
        let accepted = AnyOfBuilder::new()
            .item((u.accepts)())
            .item(null())
            .description(Some(format!("Refused with a 400 unless null or {} ({}).", u.accepted, u.why)));
        fields = fields.property(u.field, accepted);
    }
    AllOfBuilder::new()
        .item(Ref::from_schema_name(own))
        .item(Ref::from_schema_name("SamplingFields"))
        .item(fields)
        .into()
}

// ---- schemas of fields read as a raw `Value` (`schema_with`) ----

pub(crate) fn null() -> Object {
    ObjectBuilder::new().schema_type(Type::Null).build()
}

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

/// No `type` (`ObjectBuilder::new()` alone says "object").
fn any() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::AnyValue)
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn token_id() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))
}

/// One of `values` (a JSON `enum`).
pub(crate) fn one_of_values(values: &[Value]) -> Schema {
    any().enum_values(Some(values.iter().cloned())).into()
}

/// An empty array.
pub(crate) fn empty_array() -> Schema {
    ArrayBuilder::new().items(any()).max_items(Some(0)).into()
}

/// An empty object.
pub(crate) fn empty_object() -> Schema {
    ObjectBuilder::new().schema_type(Type::Object).max_properties(Some(0)).into()
}

/// Nothing but `null` (which the `anyOf` of [`body_of`] adds anyway).
pub(crate) fn nothing() -> Schema {
    ObjectBuilder::new().schema_type(Type::Null).description(Some("only null")).into()
}

/// `[]` or null, nothing else: a list this server refuses when it has entries.
pub fn refused_list() -> Schema {
    ArrayBuilder::new()
        .schema_type(nullable(Type::Array))
        .items(any())
        .max_items(Some(0))
        .description(Some("Refused (400) unless null or empty."))
        .into()
}

/// `{}` or null, nothing else.
pub fn refused_map() -> Object {
    ObjectBuilder::new()
        .schema_type(nullable(Type::Object))
        .max_properties(Some(0))
        .description(Some("Refused (400) unless null or empty."))
        .build()
}

pub fn text_part_type() -> Object {
    string().enum_values(Some(["text"])).description(Some("Only `text` parts are accepted.")).build()
}

/// `stop`: a string or at most 16 strings, each 1 to 256 characters.
pub fn stop() -> Schema {
    let one = || string().min_length(Some(1)).max_length(Some(STOP_MAX_CHARS));
    OneOfBuilder::new().item(one()).item(ArrayBuilder::new().items(one()).max_items(Some(16))).into()
}

/// What `stop` strings may hold, in characters (the server counts them the same way).
pub const STOP_MAX_CHARS: usize = 256;

/// A completion's `prompt`: a string, strings, token ids, or lists of token ids.
pub fn prompt() -> Schema {
    OneOfBuilder::new()
        .item(string())
        .item(ArrayBuilder::new().items(string()).min_items(Some(1)))
        .item(ArrayBuilder::new().items(token_id()).min_items(Some(1)))
        .item(
            ArrayBuilder::new()
                .items(ArrayBuilder::new().items(token_id()).min_items(Some(1)))
                .min_items(Some(1)),
        )
        .into()
}

/// `input` of `/v1/embeddings`: a non-empty string or 1 to 512 of them.
pub fn embedding_input() -> Schema {
    let one = || string().min_length(Some(1));
    OneOfBuilder::new()
        .item(one())
        .item(
            ArrayBuilder::new()
                .items(one())
                .min_items(Some(1))
                .max_items(Some(crate::routes::embeddings::MAX_INPUTS)),
        )
        .into()
}

pub fn encoding_format() -> Object {
    ObjectBuilder::new()
        .schema_type(nullable(Type::String))
        .enum_values(Some([Value::from("float"), Value::from("base64"), Value::Null]))
        .build()
}

/// OpenAI's `response_format` ([`crate::openai::response_format`]).
pub fn response_format() -> Schema {
    let kind = |k: &str| string().enum_values(Some([k]));
    let tagged =
        |k: &str| ObjectBuilder::new().schema_type(Type::Object).property("type", kind(k)).required("type");
    let json_schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("name", string().pattern(Some("^[A-Za-z0-9_-]{1,64}$")))
        .property("description", ObjectBuilder::new().schema_type(nullable(Type::String)))
        .property(
            "schema",
            ObjectBuilder::new()
                .schema_type(nullable(Type::Object))
                .description(Some("A JSON Schema the answer is held to; absent or null: any JSON value.")),
        )
        .property("strict", ObjectBuilder::new().schema_type(nullable(Type::Boolean)))
        .required("name");
    OneOfBuilder::new()
        .item(tagged("text"))
        .item(tagged("json_object"))
        .item(tagged("json_schema").property("json_schema", json_schema).required("json_schema"))
        .item(null())
        .description(Some(
            "Structured output. A schema the grammar compiler cannot enforce is refused (400 naming \
             `response_format.json_schema.schema`).",
        ))
        .into()
}

/// A list of `"text"` only (`modalities`).
pub(crate) fn text_modalities() -> Schema {
    ArrayBuilder::new().items(string().enum_values(Some(["text"]))).into()
}
