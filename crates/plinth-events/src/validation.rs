//! Turns what a caller asks to append into events ready to store, or
//! refuses the whole batch with an error that says what to change. Nothing
//! is written for a refused batch: validation runs before any engine call.
//!
//! Data and metadata are serialised here, once: the stored JSON text is
//! what the hash chain covers and what size limits count.

use std::collections::HashSet;

use plinth_core::config::EventsConfig;
use plinth_core::{Error, ErrorKind, ResourceName};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::{AppendRequest, NewEvent};

/// An event that passed validation, in its stored form.
#[derive(Clone, Debug)]
pub(crate) struct PreparedEvent {
    pub id: Uuid,
    /// Only ids the caller gave can match an earlier append.
    pub id_given_by_caller: bool,
    pub event_type: String,
    pub schema_version: u32,
    pub data: String,
    pub metadata: String,
}

pub(crate) fn prepare_append(
    config: &EventsConfig,
    request: &AppendRequest,
) -> Result<Vec<PreparedEvent>, Error> {
    if request.events.is_empty() {
        return Err(Error::invalid_argument(
            "empty_append",
            "an append needs at least one event",
        ));
    }
    if request.events.len() > config.max_events_per_append {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            "too_many_events",
            format!(
                "an append may carry at most {} events; this one has {}",
                config.max_events_per_append,
                request.events.len()
            ),
        ));
    }
    let mut prepared_events = Vec::with_capacity(request.events.len());
    let mut total_bytes = 0usize;
    let mut seen_ids = HashSet::with_capacity(request.events.len());
    for (index, event) in request.events.iter().enumerate() {
        let prepared = prepare_event(
            config,
            index,
            event,
            request.default_correlation_id.as_deref(),
        )?;
        if !seen_ids.insert(prepared.id) {
            return Err(Error::invalid_argument(
                "duplicate_event_id",
                format!(
                    "event {index} repeats id {} of an earlier event in the same append; ids must be unique",
                    prepared.id
                ),
            ));
        }
        total_bytes += prepared.data.len() + prepared.metadata.len();
        prepared_events.push(prepared);
    }
    if total_bytes > config.max_append_bytes {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            "append_too_large",
            format!(
                "the events' data and metadata total {total_bytes} bytes; an append may carry at most {}",
                config.max_append_bytes
            ),
        ));
    }
    Ok(prepared_events)
}

fn prepare_event(
    config: &EventsConfig,
    index: usize,
    event: &NewEvent,
    default_correlation_id: Option<&str>,
) -> Result<PreparedEvent, Error> {
    validate_event_type(&event.event_type)?;
    if event.schema_version == 0 {
        return Err(Error::invalid_argument(
            "invalid_schema_version",
            format!("event {index} has schema_version 0; schema versions start at 1"),
        ));
    }
    let metadata = canonical_metadata(index, event.metadata.as_ref(), default_correlation_id)?;
    let data = serde_json::to_string(&event.data)
        .map_err(|error| Error::internal(format!("serialising event data: {error}")))?;
    let metadata = serde_json::to_string(&metadata)
        .map_err(|error| Error::internal(format!("serialising event metadata: {error}")))?;
    let event_bytes = data.len() + metadata.len();
    if event_bytes > config.max_event_bytes {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            "event_too_large",
            format!(
                "event {index} has {event_bytes} bytes of data and metadata; an event may have at most {}",
                config.max_event_bytes
            ),
        ));
    }
    Ok(PreparedEvent {
        id: event.id.unwrap_or_else(Uuid::now_v7),
        id_given_by_caller: event.id.is_some(),
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        data,
        metadata,
    })
}

/// Event types follow the resource-name rules, under their own code.
pub(crate) fn validate_event_type(event_type: &str) -> Result<(), Error> {
    match ResourceName::parse("event type", event_type) {
        Ok(_) => Ok(()),
        Err(error) => Err(Error::invalid_argument(
            "invalid_event_type",
            error.detail().to_string(),
        )),
    }
}

/// The metadata object with `correlation_id` filled in from the default
/// when the caller gave none.
fn canonical_metadata(
    index: usize,
    metadata: Option<&Value>,
    default_correlation_id: Option<&str>,
) -> Result<Map<String, Value>, Error> {
    let mut object = match metadata {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(object)) => object.clone(),
        Some(_) => {
            return Err(invalid_metadata(
                index,
                "metadata must be a JSON object".to_string(),
            ));
        }
    };
    for field in ["correlation_id", "causation_id"] {
        if let Some(value) = object.get(field)
            && !value.is_string()
        {
            return Err(invalid_metadata(
                index,
                format!("metadata.{field} must be a string"),
            ));
        }
    }
    if !object.contains_key("correlation_id")
        && let Some(correlation_id) = default_correlation_id
    {
        object.insert(
            "correlation_id".to_string(),
            Value::String(correlation_id.to_string()),
        );
    }
    Ok(object)
}

fn invalid_metadata(index: usize, rule: String) -> Error {
    Error::invalid_argument("invalid_metadata", format!("event {index}: {rule}"))
}
