//! Hand-written `Deserialize` for the "one or a list" shapes: serde's `untagged` replaces
//! every error inside an item with "data did not match any variant", which would hide an
//! unknown key in an `[[https]]` table or an `sni` entry. These keep the inner error.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserialize, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};

use super::https::HttpsTable;
use super::raw::{HttpsValue, OneOrMany};

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
        }

        d.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

impl<'de> Deserialize<'de> for HttpsValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HttpsVisitor;

        impl<'de> Visitor<'de> for HttpsVisitor {
            type Value = HttpsValue;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"socket,cert,key[,ciphers[,[!]ca]]\" or an https table")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(HttpsValue::Compact(v.to_string()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                HttpsTable::deserialize(MapAccessDeserializer::new(map)).map(HttpsValue::Table)
            }
        }

        d.deserialize_any(HttpsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::super::RawConfig;

    fn err(text: &str) -> String {
        toml::from_str::<RawConfig>(text)
            .expect_err("invalid")
            .message()
            .to_string()
    }

    #[test]
    fn errors_inside_https_tables_are_kept() {
        let msg = err("[[https]]\nsocket = \"=0\"\ncert = \"a\"\nkey = \"b\"\nbogus = 1\n");
        assert!(msg.contains("bogus"), "{msg}");
        let msg = err("https = [\"=0,a,b\", { socket = \"=0\", cert = \"a\", key = \"b\", sni = [{ name = \"x\", cert = \"c\", key = \"k\", typo = 2 }] }]\n");
        assert!(msg.contains("typo"), "{msg}");
        let msg = err("https = 3\n");
        assert!(msg.contains("https table"), "{msg}");
    }

    #[test]
    fn one_or_many_shapes() {
        let raw: RawConfig = toml::from_str(
            "http-to = \"a.sock\"\nshared-socket = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nhttps = \"=0,a,b\"\nssl-option = \"4194304\"\n",
        )
        .expect("valid");
        assert_eq!(raw.http_to.map(|v| v.into_vec().len()), Some(1));
        assert_eq!(raw.shared_socket.map(|v| v.into_vec().len()), Some(2));
        assert_eq!(raw.https.map(|v| v.into_vec().len()), Some(1));
    }
}
