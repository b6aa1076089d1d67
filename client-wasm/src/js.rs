//! Small helpers over `js_sys` shared by the modules.

use js_sys::{Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

/// A plain object built field by field.
pub(crate) struct Obj(Object);

impl Obj {
    pub(crate) fn new() -> Self {
        Self(Object::new())
    }

    pub(crate) fn set(self, key: &str, value: impl Into<JsValue>) -> Self {
        // Setting a data property on a fresh plain object cannot fail.
        let _ = Reflect::set(&self.0, &JsValue::from_str(key), &value.into());
        self
    }

    pub(crate) fn build(self) -> JsValue {
        self.0.into()
    }
}

/// A property of a JS object, `None` when absent, `undefined` or `null`.
pub(crate) fn get(obj: &JsValue, key: &str) -> Option<JsValue> {
    Reflect::get(obj, &JsValue::from_str(key))
        .ok()
        .filter(|v| !v.is_undefined() && !v.is_null())
}

/// A string property.
pub(crate) fn get_string(obj: &JsValue, key: &str) -> Option<String> {
    get(obj, key).and_then(|v| v.as_string())
}

/// A JS array of strings.
pub(crate) fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> JsValue {
    items
        .into_iter()
        .map(JsValue::from_str)
        .collect::<js_sys::Array>()
        .into()
}

/// A message for an error value from JS (`Error`, `DOMException` or anything else).
pub(crate) fn describe(value: &JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    if let Some(e) = value.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", e.name(), e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// Milliseconds since the Unix epoch, from the JS clock.
pub(crate) fn now_ms() -> u64 {
    let now = js_sys::Date::now();
    if now.is_finite() && now > 0.0 {
        // Truncation of a positive finite millisecond count is intended.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let ms = now as u64;
        ms
    } else {
        0
    }
}
