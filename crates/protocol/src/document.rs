//! Splitting a configuration file into the fleet document and one document per service, and
//! assembling them again.
//!
//! The control plane stores and ships services separately so that an edge can apply each on
//! its own: a service whose new document does not load keeps its previous document while the
//! others update. Splitting keeps the operator's text (comments, order, formatting) through
//! `toml_edit`; assembling concatenates, so `parse(assemble(split(x)))` equals `parse(x)`.

use crate::bundle::ServiceDocument;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

/// A configuration file split apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Documents {
    /// Everything except the services.
    pub fleet: String,
    /// One `[[service]]` document per service, in file order.
    pub services: Vec<ServiceDocument>,
}

/// Splits configuration text that already passed validation. Fails only if the text is not
/// TOML or a service has no string `name`, which validation rules out.
pub fn split(text: &str) -> Result<Documents, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    let services_item = doc.remove("service");
    let tables: Vec<Table> = match services_item {
        None => Vec::new(),
        Some(Item::ArrayOfTables(a)) => a.into_iter().collect(),
        Some(Item::Value(toml_edit::Value::Array(a))) => a
            .into_iter()
            .map(|v| match v {
                toml_edit::Value::InlineTable(t) => Ok(t.into_table()),
                _ => Err("`service` entries must be tables".to_owned()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("`service` must be an array of tables".to_owned()),
    };
    let mut services = Vec::with_capacity(tables.len());
    for mut table in tables {
        let name = table
            .get("name")
            .and_then(Item::as_str)
            .ok_or("a service has no name")?
            .to_owned();
        table.set_implicit(false);
        let mut one = DocumentMut::new();
        let mut array = ArrayOfTables::new();
        array.push(table);
        one.insert("service", Item::ArrayOfTables(array));
        services.push(ServiceDocument {
            name,
            document: one.to_string(),
        });
    }
    Ok(Documents {
        fleet: doc.to_string(),
        services,
    })
}

/// Joins a fleet document and service documents into one configuration text.
pub fn assemble<'a>(fleet: &str, services: impl Iterator<Item = &'a ServiceDocument>) -> String {
    let mut out = String::with_capacity(fleet.len() + 1024);
    out.push_str(fleet.trim_end());
    out.push('\n');
    for s in services {
        out.push('\n');
        out.push_str(s.document.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/firebreak.toml");

    #[test]
    fn split_then_assemble_gives_the_same_configuration() {
        let docs = split(EXAMPLE).unwrap();
        assert!(!docs.services.is_empty());
        assert!(!docs.fleet.contains("[[service]]"));
        let again = assemble(&docs.fleet, docs.services.iter());
        let a = firebreak_config::parse_str("a", EXAMPLE).unwrap();
        let b = firebreak_config::parse_str("b", &again).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn each_service_document_stands_alone() {
        let text = r#"
[cache]
max_bytes = 268435456

[[service]]
name = "a"
hosts = ["a.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9000" }]

[[service]]
name = "b" # the second
hosts = ["b.example"]
[service.origin]
servers = [{ addr = "127.0.0.1:9001" }]
[service.cache]
rules = [{ path_prefix = "/x", bypass = true }]
"#;
        let docs = split(text).unwrap();
        assert_eq!(docs.services.len(), 2);
        assert_eq!(docs.services[1].name, "b");
        assert!(docs.services[1].document.contains("# the second"));
        let only_b = assemble(&docs.fleet, docs.services[1..].iter());
        let c = firebreak_config::parse_managed_str("b", &only_b).unwrap();
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].cache.rules.len(), 1);
        assert_eq!(c.cache.max_bytes, 268435456);
        let whole = assemble(&docs.fleet, docs.services.iter());
        assert_eq!(
            firebreak_config::parse_managed_str("x", &whole).unwrap(),
            firebreak_config::parse_managed_str("x", text).unwrap()
        );
    }

    #[test]
    fn inline_service_arrays_are_split_too() {
        let text = "service = [{ name = \"a\", hosts = [\"a.example\"], origin = { servers = [{ addr = \"127.0.0.1:1\" }] } }]\n";
        let docs = split(text).unwrap();
        let whole = assemble(&docs.fleet, docs.services.iter());
        assert_eq!(
            firebreak_config::parse_managed_str("x", &whole).unwrap(),
            firebreak_config::parse_managed_str("x", text).unwrap()
        );
    }
}
