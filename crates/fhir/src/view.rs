//! SQL-on-FHIR v2 ViewDefinitions: read and checked once ([`ViewDefinition::parse`]),
//! then turned into rows for each resource ([`ViewDefinition::rows`]) the way the
//! specification's reference runner does: `forEach` / `forEachOrNull` / `repeat` pick the
//! nodes of a `select`, a `select`'s rows are the product of its columns' row, its nested
//! `select`s' rows and its `unionAll`'s rows, and `where` keeps resources whose paths are
//! true.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::Error;
use crate::path::{Budget, Env, Item, Path, to_text};

/// The most nested a definition's `select`s may be.
const MAX_NESTING: usize = 32;
/// The most rows one resource may turn into (a runaway `repeat` or product is refused).
const MAX_ROWS: usize = 100_000;

/// A column's SQL type, from its FHIR `type` (or what its path implies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    /// `integer`, `positiveInt`, `unsignedInt`, `integer64`: BIGINT.
    Integer,
    /// `decimal`: DOUBLE.
    Decimal,
    /// Every other primitive (string, code, id, uri, date, dateTime, instant, time, ...):
    /// text, as the resource writes it; a complex value is its JSON text.
    Text,
}

impl ColumnType {
    fn of(fhir_type: &str) -> ColumnType {
        match fhir_type {
            "boolean" => ColumnType::Boolean,
            "integer" | "positiveInt" | "unsignedInt" | "integer64" => ColumnType::Integer,
            "decimal" => ColumnType::Decimal,
            _ => ColumnType::Text,
        }
    }
}

/// One output column.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    pub name: String,
    pub path: Path,
    pub ty: ColumnType,
    /// `collection: true`: an array of values.
    pub collection: bool,
    /// The FHIR type as declared (or implied), for documentation.
    pub fhir_type: Option<String>,
    pub description: Option<String>,
}

/// A `select` (the view itself is one, with the view's `select` list as nested selects).
#[derive(Clone, Debug, PartialEq)]
struct Select {
    nodes: Nodes,
    /// Indexes into the view's columns.
    columns: Vec<usize>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// Every column this select produces (own, nested, union), in order.
    produces: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
enum Nodes {
    Current,
    ForEach(Path),
    ForEachOrNull(Path),
    Repeat(Vec<Path>),
}

/// A checked ViewDefinition.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewDefinition {
    resource: String,
    name: Option<String>,
    columns: Vec<Column>,
    root: Select,
    filters: Vec<Path>,
    constants: HashMap<String, Value>,
}

/// A cell of a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Text(String),
    List(Vec<Cell>),
}

fn invalid<T>(m: impl Into<String>) -> Result<T, Error> {
    Err(Error::Invalid(m.into()))
}

/// The keys a ViewDefinition may have (the resource's metadata included).
const VIEW_KEYS: &[&str] = &[
    "resourceType",
    "id",
    "url",
    "identifier",
    "name",
    "title",
    "meta",
    "text",
    "version",
    "status",
    "experimental",
    "publisher",
    "contact",
    "description",
    "useContext",
    "copyright",
    "resource",
    "fhirVersion",
    "constant",
    "select",
    "where",
    "extension",
    "modifierExtension",
    "date",
    "profile",
];
const SELECT_KEYS: &[&str] = &[
    "column",
    "select",
    "forEach",
    "forEachOrNull",
    "repeat",
    "unionAll",
    "extension",
    "modifierExtension",
    "id",
];
const COLUMN_KEYS: &[&str] = &[
    "name",
    "path",
    "type",
    "collection",
    "description",
    "tag",
    "extension",
    "modifierExtension",
    "id",
];

fn check_keys(object: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), Error> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => invalid(format!("{what} has an unknown element '{k}'")),
        None => Ok(()),
    }
}

fn path_of(value: &Value, what: &str) -> Result<Path, Error> {
    match value.as_str() {
        Some(text) => Path::parse(text).map_err(|e| match e {
            Error::Invalid(m) => Error::Invalid(format!("{what}: {m}")),
            other => other,
        }),
        None => invalid(format!("{what} must be a FHIRPath string, not {value}")),
    }
}

/// A column name: a letter, then letters, digits and `_` (the specification's rule, which
/// also makes it a SQL identifier without quoting).
fn check_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63;
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "column name '{name}' must start with a letter and hold only letters, digits and _ (at most 63)"
        ))
    }
}

struct Builder {
    columns: Vec<Column>,
}

impl Builder {
    fn select(&mut self, value: &Value, depth: usize) -> Result<Select, Error> {
        if depth > MAX_NESTING {
            return invalid(format!("selects are nested deeper than {MAX_NESTING}"));
        }
        let Some(object) = value.as_object() else {
            return invalid(format!("a select must be an object, not {value}"));
        };
        check_keys(object, SELECT_KEYS, "a select")?;
        let for_each = object.get("forEach");
        let or_null = object.get("forEachOrNull");
        let repeat = object.get("repeat");
        if [for_each, or_null, repeat].iter().flatten().count() > 1 {
            return invalid("a select may have only one of forEach, forEachOrNull and repeat");
        }
        let nodes = if let Some(p) = for_each {
            Nodes::ForEach(path_of(p, "forEach")?)
        } else if let Some(p) = or_null {
            Nodes::ForEachOrNull(path_of(p, "forEachOrNull")?)
        } else if let Some(r) = repeat {
            let Some(paths) = r.as_array().filter(|a| !a.is_empty()) else {
                return invalid("repeat must be a non-empty array of FHIRPath strings");
            };
            Nodes::Repeat(
                paths
                    .iter()
                    .map(|p| path_of(p, "repeat"))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            Nodes::Current
        };
        let mut columns = Vec::new();
        for c in array(object.get("column"), "column")? {
            columns.push(self.column(c)?);
        }
        let mut selects = Vec::new();
        for s in array(object.get("select"), "select")? {
            selects.push(self.select(s, depth + 1)?);
        }
        let mut union_all = Vec::new();
        for s in array(object.get("unionAll"), "unionAll")? {
            union_all.push(self.select(s, depth + 1)?);
        }
        if columns.is_empty() && selects.is_empty() && union_all.is_empty() {
            return invalid("a select needs a column, a select or a unionAll");
        }
        let mut produces = columns.clone();
        for s in &selects {
            produces.extend(&s.produces);
        }
        if let Some((first, rest)) = union_all.split_first() {
            for other in rest {
                self.same_columns(first, other)?;
            }
            produces.extend(&first.produces);
        }
        Ok(Select {
            nodes,
            columns,
            selects,
            union_all,
            produces,
        })
    }

    /// The branches of a `unionAll` must produce the same columns (names, order, types).
    fn same_columns(&self, a: &Select, b: &Select) -> Result<(), Error> {
        let shape = |s: &Select| -> Vec<(String, ColumnType, bool)> {
            s.produces
                .iter()
                .map(|&i| {
                    let c = &self.columns[i];
                    (c.name.clone(), c.ty, c.collection)
                })
                .collect()
        };
        if shape(a) != shape(b) {
            let names = |s: &Select| -> Vec<String> {
                s.produces
                    .iter()
                    .map(|&i| self.columns[i].name.clone())
                    .collect()
            };
            return invalid(format!(
                "the selects of a unionAll must have the same columns (names, order and types): {:?} and {:?}",
                names(a),
                names(b)
            ));
        }
        Ok(())
    }

    /// Reads a column; a union branch repeats another branch's column, which is then the
    /// same output column.
    fn column(&mut self, value: &Value) -> Result<usize, Error> {
        let Some(object) = value.as_object() else {
            return invalid(format!("a column must be an object, not {value}"));
        };
        check_keys(object, COLUMN_KEYS, "a column")?;
        let Some(name) = object.get("name").and_then(Value::as_str) else {
            return invalid("every column needs a name");
        };
        check_name(name)?;
        let path = path_of(
            object
                .get("path")
                .ok_or_else(|| Error::Invalid(format!("column {name} needs a path")))?,
            &format!("column {name}"),
        )?;
        let collection = match object.get("collection") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return invalid(format!("collection must be true or false, not {other}"));
            }
        };
        let fhir_type = match object.get("type") {
            None => path.implied_type(),
            Some(Value::String(t)) => Some(t.clone()),
            Some(other) => return invalid(format!("type must be a string, not {other}")),
        };
        let ty = fhir_type
            .as_deref()
            .map_or(ColumnType::Text, ColumnType::of);
        let description = object
            .get("description")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.columns.push(Column {
            name: name.to_owned(),
            path,
            ty,
            collection,
            fhir_type,
            description,
        });
        Ok(self.columns.len() - 1)
    }
}

fn array<'v>(value: Option<&'v Value>, what: &str) -> Result<&'v [Value], Error> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => invalid(format!("{what} must be an array, not {other}")),
    }
}

/// A constant's value: the one `value[x]` element beside `name`.
fn constant(value: &Value) -> Result<(String, Value), Error> {
    let Some(object) = value.as_object() else {
        return invalid("a constant must be an object");
    };
    let Some(name) = object.get("name").and_then(Value::as_str) else {
        return invalid("every constant needs a name");
    };
    let values: Vec<&Value> = object
        .iter()
        .filter(|(k, _)| k.starts_with("value"))
        .map(|(_, v)| v)
        .collect();
    match (values.as_slice(), object.len()) {
        ([v], 2) if !v.is_object() && !v.is_array() && !v.is_null() => {
            Ok((name.to_owned(), (*v).clone()))
        }
        _ => invalid(format!(
            "constant {name} needs exactly one primitive value[x] element"
        )),
    }
}

impl ViewDefinition {
    /// Reads and checks a ViewDefinition's JSON text: unknown elements, bad FHIRPath,
    /// duplicate or badly named columns, unions of different columns and constants a path
    /// names but the view does not define are errors here, before any data is read.
    pub fn parse(text: &str) -> Result<ViewDefinition, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("the ViewDefinition is not JSON: {e}")))?;
        ViewDefinition::from_json(&value)
    }

    /// As [`ViewDefinition::parse`], from JSON already read.
    pub fn from_json(value: &Value) -> Result<ViewDefinition, Error> {
        let Some(object) = value.as_object() else {
            return invalid("a ViewDefinition must be a JSON object");
        };
        check_keys(object, VIEW_KEYS, "the ViewDefinition")?;
        if let Some(t) = object.get("resourceType")
            && t.as_str() != Some("ViewDefinition")
        {
            return invalid(format!("resourceType must be ViewDefinition, not {t}"));
        }
        let resource = match object.get("resource").and_then(Value::as_str) {
            Some(r) if !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()) => {
                r.to_owned()
            }
            _ => {
                return invalid("a ViewDefinition needs resource: the FHIR resource type it reads");
            }
        };
        let mut constants = HashMap::new();
        for c in array(object.get("constant"), "constant")? {
            let (name, v) = constant(c)?;
            if constants.insert(name.clone(), v).is_some() {
                return invalid(format!("constant {name} is defined twice"));
            }
        }
        let selects = array(object.get("select"), "select")?;
        if selects.is_empty() {
            return invalid("a ViewDefinition needs at least one select");
        }
        let mut builder = Builder {
            columns: Vec::new(),
        };
        let root = builder.select(&serde_json::json!({ "select": selects }), 0)?;
        let mut filters = Vec::new();
        for w in array(object.get("where"), "where")? {
            let path = w
                .as_object()
                .and_then(|o| o.get("path"))
                .ok_or_else(|| Error::Invalid("every where needs a path".into()))?;
            filters.push(path_of(path, "where")?);
        }
        let view = ViewDefinition {
            resource,
            name: object
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            columns: builder.columns,
            root,
            filters,
            constants,
        };
        view.check_names()?;
        view.check_constants()?;
        Ok(view)
    }

    fn check_names(&self) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        for &i in &self.root.produces {
            let name = self.columns[i].name.to_ascii_lowercase();
            if !seen.insert(name) {
                return invalid(format!(
                    "column {} is defined twice (names are case-insensitive in SQL)",
                    self.columns[i].name
                ));
            }
        }
        Ok(())
    }

    fn check_constants(&self) -> Result<(), Error> {
        let mut paths: Vec<&Path> = self.columns.iter().map(|c| &c.path).collect();
        paths.extend(&self.filters);
        fn walk<'s>(s: &'s Select, out: &mut Vec<&'s Path>) {
            match &s.nodes {
                Nodes::ForEach(p) | Nodes::ForEachOrNull(p) => out.push(p),
                Nodes::Repeat(ps) => out.extend(ps),
                Nodes::Current => {}
            }
            s.selects
                .iter()
                .chain(&s.union_all)
                .for_each(|c| walk(c, out));
        }
        walk(&self.root, &mut paths);
        const BUILT_IN: &[&str] = &["rowIndex", "resource", "rootResource", "context", "ucum"];
        for p in paths {
            for c in p.constants() {
                if !BUILT_IN.contains(&c) && !self.constants.contains_key(c) {
                    return invalid(format!(
                        "FHIRPath '{}' names %{c}, which is not a constant of the view",
                        p.text()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The FHIR resource type the view reads (`Patient`, `Observation`).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The view's `name`, when it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The output columns, in the specification's order.
    pub fn columns(&self) -> Vec<&Column> {
        self.root
            .produces
            .iter()
            .map(|&i| &self.columns[i])
            .collect()
    }

    /// The rows `resource` gives: none for a resource of another type; an error when a path
    /// fails (a single-valued column with several values, a `where` that is not boolean, a
    /// value of the wrong type for its column).
    pub fn rows(&self, resource: &Value) -> Result<Vec<Vec<Cell>>, Error> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(vec![]);
        }
        let budget = Budget::default();
        let env = Env {
            resource,
            constants: &self.constants,
            row_index: 0,
            budget: &budget,
        };
        let focus = [Item::Node(resource, None)];
        for filter in &self.filters {
            let result = filter.eval(&focus, &env)?;
            match result.first() {
                None => return Ok(vec![]),
                Some(item) => match item.to_json() {
                    Value::Bool(true) => {}
                    Value::Bool(false) => return Ok(vec![]),
                    _ => {
                        return Err(Error::Eval(format!(
                            "where '{}' must give a boolean",
                            filter.text()
                        )));
                    }
                },
            }
        }
        let partial = self.select_rows(&self.root, &focus, &env)?;
        let order = &self.root.produces;
        Ok(partial
            .into_iter()
            .map(|mut row| {
                order
                    .iter()
                    .map(|i| row.remove(i).unwrap_or(Cell::Null))
                    .collect()
            })
            .collect())
    }

    fn select_rows<'a>(
        &self,
        select: &Select,
        focus: &[Item<'a>],
        env: &Env<'a>,
    ) -> Result<Vec<HashMap<usize, Cell>>, Error> {
        let (nodes, or_null) = match &select.nodes {
            Nodes::Current => (vec![focus.to_vec()], false),
            Nodes::ForEach(p) => (
                p.eval(focus, env)?.into_iter().map(|i| vec![i]).collect(),
                false,
            ),
            Nodes::ForEachOrNull(p) => (
                p.eval(focus, env)?.into_iter().map(|i| vec![i]).collect(),
                true,
            ),
            Nodes::Repeat(paths) => (repeat(paths, focus, env)?, false),
        };
        let nodes: Vec<Vec<Item<'a>>> = if or_null && nodes.is_empty() {
            vec![vec![]]
        } else {
            nodes
        };
        let mut out = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            env.budget.spend(1)?;
            let env = Env {
                resource: env.resource,
                constants: env.constants,
                budget: env.budget,
                row_index: if matches!(select.nodes, Nodes::Current) {
                    env.row_index
                } else {
                    i64::try_from(index).unwrap_or(i64::MAX)
                },
            };
            let mut own = HashMap::new();
            for &c in &select.columns {
                own.insert(c, self.cell(c, node, &env)?);
            }
            let mut rows = vec![own];
            for nested in &select.selects {
                let part = self.select_rows(nested, node, &env)?;
                rows = product(rows, part)?;
            }
            if !select.union_all.is_empty() {
                // Every branch's rows under the first branch's columns.
                let first = &select.union_all[0].produces;
                let mut union = Vec::new();
                for branch in &select.union_all {
                    for row in self.select_rows(branch, node, &env)? {
                        union.push(
                            row.into_iter()
                                .map(|(k, v)| {
                                    let at = branch.produces.iter().position(|p| *p == k);
                                    (at.map_or(k, |at| first[at]), v)
                                })
                                .collect(),
                        );
                    }
                }
                rows = product(rows, union)?;
            }
            out.extend(rows);
            if out.len() > MAX_ROWS {
                return Err(Error::Eval(format!(
                    "one resource gives more than {MAX_ROWS} rows"
                )));
            }
        }
        Ok(out)
    }

    fn cell(&self, index: usize, node: &[Item<'_>], env: &Env<'_>) -> Result<Cell, Error> {
        let column = &self.columns[index];
        let items = column.path.eval(node, env)?;
        if column.collection {
            return Ok(Cell::List(
                items
                    .iter()
                    .map(|i| convert(i, column))
                    .collect::<Result<_, _>>()?,
            ));
        }
        match items.as_slice() {
            [] => Ok(Cell::Null),
            [one] => convert(one, column),
            many => Err(Error::Eval(format!(
                "column {} ('{}') gave {} values; declare it with \"collection\": true",
                column.name,
                column.path.text(),
                many.len()
            ))),
        }
    }
}

/// Each row of `a` joined with each row of `b`.
fn product(
    a: Vec<HashMap<usize, Cell>>,
    b: Vec<HashMap<usize, Cell>>,
) -> Result<Vec<HashMap<usize, Cell>>, Error> {
    if a.len().saturating_mul(b.len()) > MAX_ROWS {
        return Err(Error::Eval(format!(
            "one resource gives more than {MAX_ROWS} rows"
        )));
    }
    let mut out = Vec::with_capacity(a.len() * b.len());
    for x in &a {
        for y in &b {
            let mut row = x.clone();
            row.extend(y.iter().map(|(k, v)| (*k, v.clone())));
            out.push(row);
        }
    }
    Ok(out)
}

/// `repeat`: every node reached from `focus` by following the paths again and again (not
/// `focus` itself), depth first in document order.
fn repeat<'a>(
    paths: &[Path],
    focus: &[Item<'a>],
    env: &Env<'a>,
) -> Result<Vec<Vec<Item<'a>>>, Error> {
    let mut out = Vec::new();
    let mut stack: Vec<(Item<'a>, usize)> = Vec::new();
    let children = |node: &[Item<'a>]| -> Result<Vec<Item<'a>>, Error> {
        let mut found = Vec::new();
        for p in paths {
            found.extend(
                p.eval(node, env)?
                    .into_iter()
                    .filter(|i| matches!(i, Item::Node(Value::Object(_), _))),
            );
        }
        Ok(found)
    };
    for child in children(focus)?.into_iter().rev() {
        stack.push((child, 1));
    }
    while let Some((node, depth)) = stack.pop() {
        env.budget.spend(1)?;
        if depth > 64 || out.len() > MAX_ROWS {
            return Err(Error::Eval(
                "repeat goes deeper than 64 levels or past the row limit".into(),
            ));
        }
        let node = vec![node];
        for child in children(&node)?.into_iter().rev() {
            stack.push((child, depth + 1));
        }
        out.push(node);
    }
    Ok(out)
}

/// An item as a cell of `column`'s type.
fn convert(item: &Item<'_>, column: &Column) -> Result<Cell, Error> {
    // The error names what kind of value came, never the value (it would be stored with
    // the refresh's error, where the view's masks do not reach).
    let wrong = || {
        let kind = match item.to_json() {
            Value::Null => "null".to_owned(),
            Value::Bool(_) => "a boolean".to_owned(),
            Value::Number(_) => "a number".to_owned(),
            Value::String(s) => format!("a string of {} characters", s.chars().count()),
            Value::Array(a) => format!("an array of {} items", a.len()),
            Value::Object(_) => "an object".to_owned(),
        };
        Error::Eval(format!(
            "column {} is {}, but '{}' gave {kind}",
            column.name,
            column.fhir_type.as_deref().unwrap_or("text"),
            column.path.text(),
        ))
    };
    let json = match item {
        Item::Node(v, _) => Some(*v),
        _ => None,
    };
    Ok(match column.ty {
        ColumnType::Boolean => match item.to_json() {
            Value::Bool(b) => Cell::Bool(b),
            _ => return Err(wrong()),
        },
        ColumnType::Integer => match item.to_json() {
            Value::Number(n) => Cell::Int(n.as_i64().ok_or_else(wrong)?),
            _ => return Err(wrong()),
        },
        ColumnType::Decimal => match item.to_json() {
            Value::Number(n) => Cell::Dec(n.as_f64().ok_or_else(wrong)?),
            _ => return Err(wrong()),
        },
        ColumnType::Text => match json {
            Some(v @ (Value::Object(_) | Value::Array(_))) => Cell::Text(v.to_string()),
            _ => Cell::Text(to_text(item).ok_or_else(wrong)?),
        },
    })
}
