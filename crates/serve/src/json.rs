//! The JSON body extractor: a bad field becomes a 400 that names it by path (`messages[1].role`,
//! `max_tokens`), via `serde_path_to_error`; an oversized body becomes a 413. The content type is
//! checked before routing (`guard`: a POST must be `application/json`, 415 otherwise).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let JsonBody(bytes) = JsonBody::from_request(req, state).await?;
        parse(&bytes).map(ApiJson)
    }
}

/// The raw body, for handlers that read it as more than one type (chat and completions read
/// their own fields and the shared sampling fields; serde's `flatten` would lose field paths).
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit }
            } else {
                ApiError::InvalidJson(format!("could not read the request body: {e}"))
            }
        })?;
        Ok(JsonBody(bytes))
    }
}

/// The configured body limit, put on each request so the 413 message can state it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from a JSON array; OpenAI bodies are objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidJson("the body must be a JSON object".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de);
    if value.is_ok() {
        de.end().map_err(|e| ApiError::InvalidJson(format!("the body is not valid JSON: {e}")))?;
    }
    match value {
        Ok(v) => Ok(v),
        Err(e) => {
            let inner = e.inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::InvalidJson(format!("the body is not valid JSON: {inner}")));
            }
            let path = e.path().to_string();
            let msg = strip_position(&inner.to_string());
            // serde reports a missing field at its parent; name the field itself.
            let param = match missing_field(&msg) {
                Some(f) if path == "." => f.to_string(),
                Some(f) => format!("{path}.{f}"),
                None if path == "." => String::new(),
                None => path,
            };
            if param.is_empty() {
                return Err(ApiError::InvalidJson(format!("invalid request body: {msg}")));
            }
            Err(ApiError::field(param.clone(), format!("invalid value for `{param}`: {msg}")))
        }
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    msg.strip_prefix("missing field `")?.split('`').next()
}

/// serde_json appends " at line L column C", which means little to an API client.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Req {
        model: String,
        messages: Vec<Msg>,
        #[serde(default)]
        max_tokens: Option<u32>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
        content: String,
    }

    fn param(body: &str) -> String {
        match parse::<Req>(body.as_bytes()) {
            Err(ApiError::InvalidField { param, .. }) => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_fields_are_named_by_path() {
        assert_eq!(param(r#"{"model":"m","messages":[],"max_tokens":"ten"}"#), "max_tokens");
        assert_eq!(param(r#"{"model":"m","messages":[],"max_tokens":-1}"#), "max_tokens");
        assert_eq!(param(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#), "messages[0].content");
        assert_eq!(param(r#"{"messages":[]}"#), "model");
        assert_eq!(param(r#"{"model":"m","messages":[{"role":"user"}]}"#), "messages[0].content");
    }

    #[test]
    fn non_json_is_invalid_json() {
        assert!(matches!(parse::<Req>(b"{not json"), Err(ApiError::InvalidJson(_))));
        assert!(matches!(parse::<Req>(b""), Err(ApiError::InvalidJson(_))));
        assert!(matches!(parse::<Req>(b"[1]"), Err(ApiError::InvalidJson(_))));
        assert!(matches!(parse::<Req>(br#"{"model":"m","messages":[]} x"#), Err(ApiError::InvalidJson(_))));
    }
}
