//! Typed reading of a sink's option map, with errors that name the backend and the key.

use std::time::Duration;

use serde_json::{Map, Value};

use super::BuildError;
use crate::message::Template;

pub struct Options<'a> {
    pub backend: &'static str,
    pub map: &'a Map<String, Value>,
}

impl<'a> Options<'a> {
    pub fn new(backend: &'static str, map: &'a Map<String, Value>) -> Self {
        Self { backend, map }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> BuildError {
        BuildError::Option { backend: self.backend, key: key.to_owned(), message: message.into() }
    }

    /// The first of `keys` that is set, as a string.
    pub fn str(&self, keys: &[&str]) -> Result<Option<&'a str>, BuildError> {
        for k in keys {
            match self.map.get(*k) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => return Err(self.err(k, "must not be empty")),
                Some(Value::String(s)) => return Ok(Some(s)),
                Some(_) => return Err(self.err(k, "expected a string")),
            }
        }
        Ok(None)
    }

    pub fn required_str(&self, keys: &[&str]) -> Result<&'a str, BuildError> {
        self.str(keys)?.ok_or_else(|| self.err(keys[0], "is required"))
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
            Some(_) => Err(self.err(key, "expected true or false")),
        }
    }

    pub fn u64(&self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, BuildError> {
        let v = match self.map.get(key) {
            None | Some(Value::Null) => return Ok(default),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match v {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.err(key, format!("expected an integer between {min} and {max}"))),
        }
    }

    pub fn millis(&self, key: &str, default_ms: u64) -> Result<Duration, BuildError> {
        Ok(Duration::from_millis(self.u64(key, default_ms, 1, 3_600_000)?))
    }

    /// A list of strings, given as a JSON array or a comma-separated string.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                Ok(Some(s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()))
            }
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| self.err(key, "expected an array of strings")))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(self.err(key, "expected an array of strings")),
        }
    }

    /// A template from the first of `keys` that is set, else `default`.
    pub fn template(&self, keys: &[&str], default: &str) -> Result<Template, BuildError> {
        let source = self.str(keys)?.unwrap_or(default);
        Template::parse(source).map_err(|e| self.err(keys[0], e.to_string()))
    }

    /// An object of string settings (numbers and booleans are accepted and written as text).
    pub fn string_map(&self, key: &str) -> Result<Vec<(String, String)>, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                    _ => Err(self.err(key, format!("'{k}': expected a string, number or boolean"))),
                })
                .collect(),
            Some(_) => Err(self.err(key, "expected an object of settings")),
        }
    }

    /// A one-of choice, case-insensitive; returns the matching entry of `allowed`.
    pub fn choice(
        &self,
        key: &str,
        allowed: &[&'static str],
        default: &'static str,
    ) -> Result<&'static str, BuildError> {
        match self.str(&[key])? {
            None => Ok(default),
            Some(v) => allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(v))
                .copied()
                .ok_or_else(|| self.err(key, format!("'{v}' is not one of {}", allowed.join(", ")))),
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> BuildError {
        self.err(key, message)
    }
}
