//! Presence JSON: what a state says about who is there, parsed once, and made safe to relay.
//!
//! [`read_state`] validates a state's JSON and reads its `user.name` and `user.color` into a
//! [`PresentUser`] in one pass; the decoder (`protocol::decode_awareness`) calls it, so nothing
//! downstream parses presence JSON again. [`vouch_state`] stamps a verified [`Identity`] into a
//! state and strips colours that are not plain. Both are pure functions of the text.
//!
//! The probes below are hand-written serde visitors rather than derived structs: a derived
//! struct would allocate for every field it keeps and could not stop at `user` while still
//! validating the rest of the value in the same walk. This module imports nothing from the
//! rest of the crate, which keeps `protocol` and `awareness` from depending on each other.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Longest user name kept from a presence state, in characters; a longer name is cut to this.
pub const MAX_USER_NAME_CHARS: usize = 64;
/// Longest user colour kept, in characters; a longer value is no CSS colour and is dropped.
pub const MAX_USER_COLOR_CHARS: usize = 64;

/// Who a presence state says is there: its `user.name` and `user.color`, the fields the Yjs
/// editor bindings (y-codemirror.next, y-prosemirror) read to label remote cursors.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PresentUser {
    /// `user.name`, at most [`MAX_USER_NAME_CHARS`] characters.
    pub name: Arc<str>,
    /// `user.color` if it is a string of at most [`MAX_USER_COLOR_CHARS`] characters.
    pub color: Option<Arc<str>>,
}

/// Who the server verified a peer to be (from its token). It is stamped into the `user` of every
/// presence state the peer sends, so no connection can pose as someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`: the stable account id.
    pub sub: Arc<str>,
    /// The display name: the token's `name`, or its `sub` when it has none.
    pub name: Arc<str>,
}

/// Checks that `json` is one valid JSON value and reads the user it names, in a single pass.
///
/// The user is `Some` only when the value is an object whose `user` is an object with a string
/// `name`; a repeated key counts by its last occurrence, as `JSON.parse` does. Every other
/// shape is walked (and so validated) but ignored.
pub fn read_state(json: &str) -> Result<Option<PresentUser>, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let user = StateProbe.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(user)
}

/// The `user.sub` a state was stamped with, if it has one (a state relayed by another node
/// carries the identity that node verified).
pub fn state_sub(json: &str) -> Option<String> {
    let state: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(state.get("user")?.get("sub")?.as_str()?.to_owned())
}

/// Whether `color` is a plain `#rgb`, `#rgba`, `#rrggbb` or `#rrggbbaa` colour: nothing a style
/// attribute could be made to do more with.
pub fn is_plain_color(color: &str) -> bool {
    color.strip_prefix('#').is_some_and(|hex| {
        matches!(hex.len(), 3 | 4 | 6 | 8) && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
    })
}

/// The state `json` made safe to relay, or `None` when it already is.
///
/// With an `identity`, the state must be an object whose `user` names exactly that identity
/// (`name` and `sub`); otherwise they are set, and a `user` that is not an object is replaced.
/// A `user.color` or `user.colorLight` that is not a plain colour is removed in any case.
/// The check reads only `user`; the whole state is parsed and re-serialised only when a change
/// is needed (for a forged or unstamped state: once per state, never per recipient).
pub fn vouch_state(
    json: &str,
    identity: Option<&Identity>,
) -> Option<(Arc<str>, Option<PresentUser>)> {
    use serde_json::{Map, Value};
    if !needs_vouching(json, identity) {
        return None;
    }
    // The decoder's validation skips what it does not read, and serde_json's skipping is more
    // lenient than a full parse (lone surrogates, nesting past 128 levels). A state that needs a
    // change but cannot be parsed fully is not relayed as sent: it is replaced by the smallest
    // state that is safe, which names only the verified identity, if any.
    let (mut state, replaced) = match serde_json::from_str::<Value>(json) {
        Ok(state) => (state, false),
        Err(_) => (Value::Object(Map::new()), true),
    };
    let Value::Object(object) = &mut state else {
        // A scalar or array state names nobody; with an identity it cannot be shown as anyone.
        return None;
    };
    if identity.is_some() && !object.get("user").is_some_and(Value::is_object) {
        object.insert("user".into(), Value::Object(Map::new()));
    }
    let mut changed = false;
    if let Some(Value::Object(user)) = object.get_mut("user") {
        for key in ["color", "colorLight"] {
            if user
                .get(key)
                .is_some_and(|color| !color.as_str().is_some_and(is_plain_color))
            {
                user.remove(key);
                changed = true;
            }
        }
        if let Some(identity) = identity {
            user.insert("name".into(), Value::String(identity.name.to_string()));
            user.insert("sub".into(), Value::String(identity.sub.to_string()));
            changed = true;
        }
    }
    if !changed && !replaced {
        return None;
    }
    let json = serde_json::to_string(&state).ok()?;
    let present = read_state(&json).ok().flatten();
    Some((Arc::from(json), present))
}

/// The fields of `user` that vouching looks at, borrowed from the JSON text where possible.
#[derive(serde::Deserialize)]
struct UserCheck<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    sub: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    color: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, rename = "colorLight")]
    color_light: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct StateCheck<'a> {
    #[serde(borrow, default)]
    user: Option<UserCheck<'a>>,
}

/// Whether [`vouch_state`] has anything to change: one allocation-free pass that skips every
/// field but `user`. Anything unusual (a `user` that is not an object, a colour that is not a
/// string, a repeated key) answers yes, and the full path decides.
fn needs_vouching(json: &str, identity: Option<&Identity>) -> bool {
    let Ok(state) = serde_json::from_str::<StateCheck<'_>>(json) else {
        return true;
    };
    let user = state.user.as_ref();
    let unsafe_color = |color: Option<&std::borrow::Cow<'_, str>>| {
        color.is_some_and(|color| !is_plain_color(color))
    };
    if user.is_some_and(|user| {
        unsafe_color(user.color.as_ref()) || unsafe_color(user.color_light.as_ref())
    }) {
        return true;
    }
    identity.is_some_and(|identity| {
        user.is_none_or(|user| {
            user.name.as_deref() != Some(&*identity.name)
                || user.sub.as_deref() != Some(&*identity.sub)
        })
    })
}

/// `text` cut to at most `max_chars` characters; copies only when it is longer.
fn truncate_chars(text: Arc<str>, max_chars: usize) -> Arc<str> {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => Arc::from(&text[..cut]),
        None => text,
    }
}

// The three probes below walk one JSON value each. Scalars and arrays they do not want are
// consumed and answered with `Default`, so the walk validates the whole text like `IgnoredAny`.

/// Skips every shape a probe is not interested in.
macro_rules! ignore_other_shapes {
    () => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Self::Value::default())
        }
    };
}

/// The whole state: looks for `user`.
struct StateProbe;

impl<'de> DeserializeSeed<'de> for StateProbe {
    type Value = Option<PresentUser>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StateProbe {
    type Value = Option<PresentUser>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    ignore_other_shapes!();

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut user = None;
        while let Some(key) = map.next_key_seed(KeyProbe(&["user"]))? {
            match key {
                Some(_) => user = map.next_value_seed(UserProbe)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(user)
    }
}

/// The value of `user`: looks for `name` and `color`.
struct UserProbe;

impl<'de> DeserializeSeed<'de> for UserProbe {
    type Value = Option<PresentUser>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UserProbe {
    type Value = Option<PresentUser>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    ignore_other_shapes!();

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut name = None;
        let mut color = None;
        while let Some(key) = map.next_key_seed(KeyProbe(&["name", "color"]))? {
            match key {
                Some(0) => name = map.next_value_seed(TextProbe)?,
                Some(_) => color = map.next_value_seed(TextProbe)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(name.map(|name| PresentUser {
            name: truncate_chars(name, MAX_USER_NAME_CHARS),
            color: color.filter(|color| color.chars().count() <= MAX_USER_COLOR_CHARS),
        }))
    }
}

/// A value that matters only if it is a string, which is then copied once.
struct TextProbe;

impl<'de> DeserializeSeed<'de> for TextProbe {
    type Value = Option<Arc<str>>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TextProbe {
    type Value = Option<Arc<str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    ignore_other_shapes!();

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Some(Arc::from(text)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// An object key: the index of the wanted name it equals, or `None`. Allocates nothing.
struct KeyProbe(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeyProbe {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyProbe {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|wanted| *wanted == key))
    }
}
