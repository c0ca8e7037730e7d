//! The FHIRPath that SQL-on-FHIR ViewDefinitions use: parsed once ([`Path::parse`]) and
//! evaluated over a resource's JSON without copying it ([`Path::eval`]).
//!
//! Supported: member navigation (arrays flatten; a choice element `value` finds
//! `valueQuantity`, `valueString`, ... and remembers the type for `ofType`), indexers,
//! literals (strings, integers, decimals, booleans, `{}`), `$this`, `%constants`
//! (`%rowIndex`, `%resource`), the operators `.` `[]` unary `-` `*` `/` `div` `mod` `+` `-`
//! `&` `is` `as` `|` `<` `<=` `>` `>=` `=` `!=` `~` `!~` `in` `contains` `and` `or` `xor`
//! `implies`, and the functions of [`Function`]. Anything else is refused when the view is
//! created, not when it is refreshed.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::Value;

use crate::Error;

/// The most nested a path may be (parentheses, invocations): deeper input is refused,
/// never a stack overflow.
const MAX_DEPTH: usize = 64;
/// The deepest expression tree accepted (a chain of invocations or operators is as deep as
/// it is long).
const MAX_TREE_DEPTH: usize = 256;
/// The longest path text accepted.
const MAX_LEN: usize = 4096;

/// A parsed FHIRPath expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    text: String,
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    /// The input collection (the start of a path, or `$this` inside `where`).
    This,
    Literal(Literal),
    Constant(String),
    /// `base.name` (`base` absent: on the focus).
    Member(Box<Expr>, String),
    Call(Box<Expr>, Function, Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `x is T` / `x as T`.
    Type(bool, Box<Expr>, String),
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Empty,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// The functions a path may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    Where,
    Select,
    Exists,
    Empty,
    First,
    Last,
    Tail,
    Skip,
    Take,
    Count,
    Not,
    OfType,
    Extension,
    GetResourceKey,
    GetReferenceKey,
    Join,
    Iif,
    HasValue,
    ToString,
    Lower,
    Upper,
    StartsWith,
    EndsWith,
    StrContains,
    Length,
    Distinct,
    AllTrue,
    AnyTrue,
    All,
    LowBoundary,
    HighBoundary,
}

impl Function {
    fn named(name: &str) -> Option<(Function, usize, usize)> {
        use Function::*;
        // (function, fewest arguments, most arguments)
        Some(match name {
            "where" => (Where, 1, 1),
            "select" => (Select, 1, 1),
            "exists" => (Exists, 0, 1),
            "empty" => (Empty, 0, 0),
            "first" => (First, 0, 0),
            "last" => (Last, 0, 0),
            "tail" => (Tail, 0, 0),
            "skip" => (Skip, 1, 1),
            "take" => (Take, 1, 1),
            "count" => (Count, 0, 0),
            "not" => (Not, 0, 0),
            "ofType" => (OfType, 1, 1),
            "extension" => (Extension, 1, 1),
            "getResourceKey" => (GetResourceKey, 0, 0),
            "getReferenceKey" => (GetReferenceKey, 0, 1),
            "join" => (Join, 0, 1),
            "iif" => (Iif, 2, 3),
            "hasValue" => (HasValue, 0, 0),
            "toString" => (ToString, 0, 0),
            "lower" => (Lower, 0, 0),
            "upper" => (Upper, 0, 0),
            "startsWith" => (StartsWith, 1, 1),
            "endsWith" => (EndsWith, 1, 1),
            "contains" => (StrContains, 1, 1),
            "length" => (Length, 0, 0),
            "distinct" => (Distinct, 0, 0),
            "allTrue" => (AllTrue, 0, 0),
            "anyTrue" => (AnyTrue, 0, 0),
            "all" => (All, 1, 1),
            "lowBoundary" => (LowBoundary, 0, 1),
            "highBoundary" => (HighBoundary, 0, 1),
            _ => return None,
        })
    }

    /// Functions whose argument is a type name, not an expression.
    fn takes_type(self) -> bool {
        matches!(self, Function::OfType | Function::GetReferenceKey)
    }
}

/// The FHIR data types a choice element's JSON name can end in (`value[x]` →
/// `valueQuantity`), with the first letter as in the type's name.
const CHOICE_TYPES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "integer64",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "CodeableReference",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "RatioRange",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
];

/// The type named by `suffix` (`Quantity`, `DateTime`), as FHIR spells it.
fn choice_type(suffix: &str) -> Option<&'static str> {
    let mut chars = suffix.chars();
    let first = chars.next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    CHOICE_TYPES.iter().copied().find(|t| {
        let mut tc = t.chars();
        tc.next().is_some_and(|c| c.eq_ignore_ascii_case(&first)) && tc.as_str() == chars.as_str()
    })
}

/// One item of a collection: a node of the resource (with the type a choice element's name
/// gave it), or a value computed by the path.
#[derive(Clone, Debug)]
pub enum Item<'a> {
    Node(&'a Value, Option<&'static str>),
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'a, str>),
}

/// A primitive view of an item, for operators.
#[derive(Clone, Copy, Debug)]
enum Prim<'b> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(&'b str),
    Other,
}

impl<'a> Item<'a> {
    fn prim(&self) -> Prim<'_> {
        match self {
            Item::Bool(b) => Prim::Bool(*b),
            Item::Int(i) => Prim::Int(*i),
            Item::Dec(d) => Prim::Dec(*d),
            Item::Str(s) => Prim::Str(s),
            Item::Node(v, _) => match v {
                Value::Bool(b) => Prim::Bool(*b),
                Value::String(s) => Prim::Str(s),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => Prim::Int(i),
                    None => n.as_f64().map_or(Prim::Other, Prim::Dec),
                },
                _ => Prim::Other,
            },
        }
    }

    /// The item as JSON (for columns and comparisons of complex values).
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node(v, _) => (*v).clone(),
            Item::Bool(b) => Value::Bool(*b),
            Item::Int(i) => Value::from(*i),
            Item::Dec(d) => serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
            Item::Str(s) => Value::String(s.to_string()),
        }
    }

    fn object(&self) -> Option<&'a serde_json::Map<String, Value>> {
        match self {
            Item::Node(Value::Object(o), _) => Some(o),
            _ => None,
        }
    }

    /// Whether the item is of FHIR (or System) type `name`, as far as its JSON shows.
    fn is_type(&self, name: &str) -> bool {
        let name = name
            .strip_prefix("FHIR.")
            .or_else(|| name.strip_prefix("System."))
            .unwrap_or(name);
        let same = |t: &str| t.eq_ignore_ascii_case(name);
        match self {
            Item::Node(_, Some(t)) => same(t),
            Item::Node(Value::Object(o), None) => {
                o.get("resourceType").and_then(Value::as_str) == Some(name)
                    || name.starts_with(|c: char| c.is_ascii_uppercase())
                        && choice_type(name).is_some()
                        && o.get("resourceType").is_none()
            }
            other => match other.prim() {
                Prim::Bool(_) => same("boolean"),
                Prim::Int(_) => [
                    "integer",
                    "positiveInt",
                    "unsignedInt",
                    "integer64",
                    "decimal",
                ]
                .iter()
                .any(|t| same(t)),
                Prim::Dec(_) => same("decimal"),
                Prim::Str(_) => {
                    choice_type(name).is_some_and(|t| t.starts_with(|c: char| c.is_lowercase()))
                        && ![
                            "boolean",
                            "integer",
                            "decimal",
                            "positiveInt",
                            "unsignedInt",
                        ]
                        .iter()
                        .any(|t| same(t))
                }
                Prim::Other => false,
            },
        }
    }
}

/// What a path is evaluated in: the resource, the view's constants and `%rowIndex`.
pub struct Env<'a> {
    pub resource: &'a Value,
    pub constants: &'a HashMap<String, Value>,
    pub row_index: i64,
    /// The work one resource may cost (shared by every path evaluated for it).
    pub budget: &'a Budget,
}

/// How much work evaluating a view over one resource may do: every step of a path, every
/// item it produces and every pair a union or `distinct()` compares spends from it, so that
/// a hostile view (collections that double at each step, selects nested around empty
/// `forEach`es) fails with an error instead of holding a thread or its memory.
#[derive(Debug)]
pub struct Budget {
    left: std::cell::Cell<u64>,
    limit: u64,
}

impl Budget {
    /// The default: generous for any real resource (a ViewDefinition over a Bundle of
    /// thousands of entries spends a few hundred thousand).
    pub const DEFAULT: u64 = 4_000_000;

    pub fn new(limit: u64) -> Budget {
        Budget {
            left: std::cell::Cell::new(limit),
            limit,
        }
    }

    /// Spends `n`; an error once the budget is gone.
    pub fn spend(&self, n: u64) -> Result<(), Error> {
        match self.left.get().checked_sub(n) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.left.set(0);
                Err(Error::Eval(format!(
                    "evaluating the view over one resource took more than {} steps",
                    self.limit
                )))
            }
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(Budget::DEFAULT)
    }
}

impl Path {
    /// Parses `text`; an error names what was expected and where.
    pub fn parse(text: &str) -> Result<Path, Error> {
        if text.len() > MAX_LEN {
            return Err(Error::Invalid(format!(
                "a FHIRPath expression is longer than {MAX_LEN} bytes"
            )));
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            depth: 0,
        };
        let expr = parser.expr(0)?;
        // Long chains (`a.b.c...`, `1 + 1 + ...`) nest the tree without nesting the text:
        // evaluation recurses as deep as the tree, so it is bounded too.
        if expr.depth() > MAX_TREE_DEPTH {
            return Err(Error::Invalid(format!(
                "FHIRPath '{text}': more than {MAX_TREE_DEPTH} steps in one chain"
            )));
        }
        if parser.at != parser.tokens.len() {
            return Err(Error::Invalid(format!(
                "FHIRPath '{text}': unexpected '{}'",
                parser.tokens[parser.at].text()
            )));
        }
        Ok(Path {
            text: text.to_owned(),
            expr,
        })
    }

    /// The path as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `%constants` the path names (other than `%rowIndex`, `%resource` and friends).
    pub fn constants(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.expr.walk(&mut |e| {
            if let Expr::Constant(c) = e {
                out.push(c.as_str());
            }
        });
        out
    }

    /// Evaluates the path on `focus`.
    pub fn eval<'a>(&self, focus: &[Item<'a>], env: &Env<'a>) -> Result<Vec<Item<'a>>, Error> {
        eval(&self.expr, focus, env).map_err(|e| match e {
            Error::Eval(m) => Error::Eval(format!("FHIRPath '{}': {m}", self.text)),
            other => other,
        })
    }

    /// The column type the path's last step implies, when it implies one (`exists()` →
    /// boolean, `ofType(integer)` → integer, a comparison → boolean, `count()` → integer).
    pub fn implied_type(&self) -> Option<String> {
        match &self.expr {
            Expr::Call(_, f, args) => match f {
                Function::Exists
                | Function::Empty
                | Function::Not
                | Function::HasValue
                | Function::StartsWith
                | Function::EndsWith
                | Function::StrContains
                | Function::AllTrue
                | Function::AnyTrue
                | Function::All => Some("boolean".into()),
                Function::Count | Function::Length => Some("integer".into()),
                Function::OfType => type_name(args.first()?).map(str::to_owned),
                Function::Join
                | Function::ToString
                | Function::Lower
                | Function::Upper
                | Function::GetResourceKey
                | Function::GetReferenceKey => Some("string".into()),
                _ => None,
            },
            Expr::Binary(op, _, _) => match op {
                BinOp::Lt
                | BinOp::Le
                | BinOp::Gt
                | BinOp::Ge
                | BinOp::Eq
                | BinOp::Ne
                | BinOp::Equiv
                | BinOp::NotEquiv
                | BinOp::In
                | BinOp::Contains
                | BinOp::And
                | BinOp::Or
                | BinOp::Xor
                | BinOp::Implies => Some("boolean".into()),
                BinOp::Concat => Some("string".into()),
                BinOp::Div => Some("decimal".into()),
                _ => None,
            },
            Expr::Type(true, _, _) => Some("boolean".into()),
            Expr::Literal(Literal::Bool(_)) => Some("boolean".into()),
            Expr::Literal(Literal::Int(_)) => Some("integer".into()),
            Expr::Literal(Literal::Dec(_)) => Some("decimal".into()),
            Expr::Constant(c) if c == "rowIndex" => Some("integer".into()),
            _ => None,
        }
    }
}

impl Expr {
    /// The tree's depth (iteratively: a deep tree is what this guards against).
    fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((e, d)) = stack.pop() {
            deepest = deepest.max(d);
            if d > MAX_TREE_DEPTH {
                break;
            }
            match e {
                Expr::Member(b, _) | Expr::Negate(b) | Expr::Type(_, b, _) => {
                    stack.push((b, d + 1))
                }
                Expr::Call(b, _, args) => {
                    stack.push((b, d + 1));
                    stack.extend(args.iter().map(|a| (a, d + 1)));
                }
                Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                    stack.push((a, d + 1));
                    stack.push((b, d + 1));
                }
                Expr::This | Expr::Literal(_) | Expr::Constant(_) => {}
            }
        }
        deepest
    }

    fn walk<'e>(&'e self, f: &mut impl FnMut(&'e Expr)) {
        f(self);
        match self {
            Expr::Member(b, _) | Expr::Negate(b) | Expr::Type(_, b, _) => b.walk(f),
            Expr::Call(b, _, args) => {
                b.walk(f);
                args.iter().for_each(|a| a.walk(f));
            }
            Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::This | Expr::Literal(_) | Expr::Constant(_) => {}
        }
    }
}

/// The type an argument such as `Quantity` or `FHIR.Quantity` names.
fn type_name(arg: &Expr) -> Option<&str> {
    match arg {
        Expr::Member(base, name) => match base.as_ref() {
            Expr::This => Some(name),
            Expr::Member(b, ns)
                if matches!(b.as_ref(), Expr::This) && (ns == "FHIR" || ns == "System") =>
            {
                Some(name)
            }
            _ => None,
        },
        _ => None,
    }
}

// ---------------------------------------------------------------- lexing

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// A `` `delimited` `` identifier: never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Const(String),
    This,
    Sym(&'static str),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Quoted(s) => s.clone(),
            Tok::Str(s) => format!("'{s}'"),
            Tok::Int(i) => i.to_string(),
            Tok::Dec(d) => d.to_string(),
            Tok::Const(c) => format!("%{c}"),
            Tok::This => "$this".into(),
            Tok::Sym(s) => (*s).into(),
        }
    }
}

const SYMBOLS: &[&str] = &[
    "{}", "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", ",", "=", "~", "<", ">", "+", "-", "*",
    "/", "&", "|",
];

fn lex(text: &str) -> Result<Vec<Tok>, Error> {
    let bad = |m: String| Error::Invalid(format!("FHIRPath '{text}': {m}"));
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c.is_whitespace() {
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |i| &rest[i..]);
            continue;
        }
        if rest.starts_with("/*") {
            let end = rest[2..]
                .find("*/")
                .ok_or_else(|| bad("unterminated comment".into()))?;
            rest = &rest[end + 4..];
            continue;
        }
        if c == '\'' || c == '`' {
            let (s, len) = quoted(rest, c).ok_or_else(|| bad("unterminated string".into()))?;
            out.push(if c == '`' {
                Tok::Quoted(s)
            } else {
                Tok::Str(s)
            });
            rest = &rest[len..];
            continue;
        }
        if c.is_ascii_digit() {
            let len = rest
                .find(|ch: char| !ch.is_ascii_digit() && ch != '.')
                .unwrap_or(rest.len());
            let mut number = &rest[..len];
            // `1.first()`: a dot not followed by a digit ends the number.
            if let Some(dot) = number.find('.')
                && !number[dot + 1..].starts_with(|ch: char| ch.is_ascii_digit())
            {
                number = &number[..dot];
            }
            if number.contains('.') {
                let d: f64 = number
                    .parse()
                    .map_err(|_| bad(format!("bad number {number}")))?;
                out.push(Tok::Dec(d));
            } else {
                let i: i64 = number
                    .parse()
                    .map_err(|_| bad(format!("integer {number} out of range")))?;
                out.push(Tok::Int(i));
            }
            rest = &rest[number.len()..];
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let len = rest
                .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            out.push(Tok::Ident(rest[..len].to_owned()));
            rest = &rest[len..];
            continue;
        }
        if c == '%' || c == '$' {
            let body = &rest[1..];
            let (name, len) = if body.starts_with('`') || body.starts_with('\'') {
                let q = body.chars().next().unwrap_or('`');
                quoted(body, q).ok_or_else(|| bad("unterminated name".into()))?
            } else {
                let len = body
                    .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                    .unwrap_or(body.len());
                (body[..len].to_owned(), len)
            };
            if name.is_empty() {
                return Err(bad(format!("a name must follow '{c}'")));
            }
            if c == '$' {
                if name != "this" {
                    return Err(bad(format!("${name} is not supported (only $this)")));
                }
                out.push(Tok::This);
            } else {
                out.push(Tok::Const(name));
            }
            rest = &body[len..];
            continue;
        }
        match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            Some(s) => {
                out.push(Tok::Sym(s));
                rest = &rest[s.len()..];
            }
            None => return Err(bad(format!("unexpected character '{c}'"))),
        }
    }
    Ok(out)
}

/// A quoted string or identifier starting at `text[0] == quote`: its unescaped content and
/// its length in `text`.
fn quoted(text: &str, quote: char) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return Some((out, i + 1));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let (_, e) = chars.next()?;
        match e {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = (0..4)
                    .filter_map(|_| chars.next().map(|(_, h)| h))
                    .collect();
                let code = u32::from_str_radix(&hex, 16).ok()?;
                out.push(char::from_u32(code)?);
            }
            other => out.push(other),
        }
    }
    None
}

// ---------------------------------------------------------------- parsing

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
    depth: usize,
}

/// Binary operators by precedence, loosest first (FHIRPath §6).
const LEVELS: &[&[(&str, BinOp)]] = &[
    &[("implies", BinOp::Implies)],
    &[("or", BinOp::Or), ("xor", BinOp::Xor)],
    &[("and", BinOp::And)],
    &[("in", BinOp::In), ("contains", BinOp::Contains)],
    &[
        ("=", BinOp::Eq),
        ("~", BinOp::Equiv),
        ("!=", BinOp::Ne),
        ("!~", BinOp::NotEquiv),
    ],
    &[
        ("<=", BinOp::Le),
        (">=", BinOp::Ge),
        ("<", BinOp::Lt),
        (">", BinOp::Gt),
    ],
    &[("|", BinOp::Union)],
    // `is` / `as` sit here (handled in `expr`).
    &[],
    &[("+", BinOp::Add), ("-", BinOp::Sub), ("&", BinOp::Concat)],
    &[
        ("*", BinOp::Mul),
        ("/", BinOp::Div),
        ("div", BinOp::IntDiv),
        ("mod", BinOp::Mod),
    ],
];
const TYPE_LEVEL: usize = 7;

impl Parser {
    fn error(&self, what: &str) -> Error {
        let found = self
            .tokens
            .get(self.at)
            .map_or("the end".to_owned(), |t| format!("'{}'", t.text()));
        Error::Invalid(format!("FHIRPath: expected {what}, found {found}"))
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.at)
    }

    fn eat_sym(&mut self, s: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Sym(x)) if *x == s) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(x)) if x == w)
    }

    /// An expression from precedence `level` on. Only a whole expression (level 0: the
    /// path, a parenthesis, an argument, an index) counts as one level of nesting.
    fn expr(&mut self, level: usize) -> Result<Expr, Error> {
        if level > 0 {
            return self.level(level);
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error::Invalid(format!(
                "FHIRPath: nested deeper than {MAX_DEPTH}"
            )));
        }
        let result = self.level(level);
        self.depth -= 1;
        result
    }

    fn level(&mut self, level: usize) -> Result<Expr, Error> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.expr(level + 1)?;
        loop {
            if level == TYPE_LEVEL {
                let is = self.is_word("is");
                if is || self.is_word("as") {
                    self.at += 1;
                    let name = self.type_specifier()?;
                    left = Expr::Type(is, Box::new(left), name);
                    continue;
                }
                return Ok(left);
            }
            let op = LEVELS[level].iter().find(|(s, _)| match self.peek() {
                Some(Tok::Sym(x)) => x == s,
                Some(Tok::Ident(x)) => x == s,
                _ => false,
            });
            let Some((_, op)) = op else {
                return Ok(left);
            };
            self.at += 1;
            let right = self.expr(level + 1)?;
            left = Expr::Binary(*op, Box::new(left), Box::new(right));
        }
    }

    fn type_specifier(&mut self) -> Result<String, Error> {
        let mut name = self.identifier().ok_or_else(|| self.error("a type name"))?;
        while self.eat_sym(".") {
            let part = self.identifier().ok_or_else(|| self.error("a type name"))?;
            name = format!("{name}.{part}");
        }
        Ok(name)
    }

    fn identifier(&mut self) -> Option<String> {
        match self.peek() {
            Some(Tok::Ident(s) | Tok::Quoted(s)) => {
                let s = s.clone();
                self.at += 1;
                Some(s)
            }
            _ => None,
        }
    }

    fn unary(&mut self) -> Result<Expr, Error> {
        if self.eat_sym("-") {
            return Ok(Expr::Negate(Box::new(self.expr(LEVELS.len())?)));
        }
        if self.eat_sym("+") {
            return self.expr(LEVELS.len());
        }
        let mut e = self.term()?;
        loop {
            if self.eat_sym(".") {
                e = self.invocation(e)?;
            } else if self.eat_sym("[") {
                let index = self.expr(0)?;
                if !self.eat_sym("]") {
                    return Err(self.error("']'"));
                }
                e = Expr::Index(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, Error> {
        let Some(tok) = self.peek().cloned() else {
            return Err(self.error("an expression"));
        };
        match tok {
            Tok::Str(s) => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Str(s)))
            }
            Tok::Int(i) => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Int(i)))
            }
            Tok::Dec(d) => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Dec(d)))
            }
            Tok::Const(c) => {
                self.at += 1;
                Ok(Expr::Constant(c))
            }
            Tok::This => {
                self.at += 1;
                Ok(Expr::This)
            }
            Tok::Ident(w) if w == "true" || w == "false" => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Bool(w == "true")))
            }
            Tok::Sym("(") => {
                self.at += 1;
                let e = self.expr(0)?;
                if !self.eat_sym(")") {
                    return Err(self.error("')'"));
                }
                Ok(e)
            }
            Tok::Sym("{}") => {
                self.at += 1;
                Ok(Expr::Literal(Literal::Empty))
            }
            Tok::Ident(_) | Tok::Quoted(_) => self.invocation(Expr::This),
            _ => Err(self.error("an expression")),
        }
    }

    /// A member or a function call on `base`.
    fn invocation(&mut self, base: Expr) -> Result<Expr, Error> {
        let name = self
            .identifier()
            .ok_or_else(|| self.error("a name after '.'"))?;
        if !self.eat_sym("(") {
            return Ok(Expr::Member(Box::new(base), name));
        }
        let (function, fewest, most) = Function::named(&name).ok_or_else(|| {
            Error::Invalid(format!("FHIRPath: the function {name}() is not supported"))
        })?;
        let mut args = Vec::new();
        if !self.eat_sym(")") {
            loop {
                args.push(self.expr(0)?);
                if self.eat_sym(")") {
                    break;
                }
                if !self.eat_sym(",") {
                    return Err(self.error("',' or ')'"));
                }
            }
        }
        if args.len() < fewest || args.len() > most {
            return Err(Error::Invalid(format!(
                "FHIRPath: {name}() takes {fewest}..{most} arguments, not {}",
                args.len()
            )));
        }
        if function.takes_type() && args.first().is_some_and(|a| type_name(a).is_none()) {
            return Err(Error::Invalid(format!(
                "FHIRPath: the argument of {name}() must be a type name"
            )));
        }
        Ok(Expr::Call(Box::new(base), function, args))
    }
}

// ---------------------------------------------------------------- evaluation

fn eval_err<T>(m: impl Into<String>) -> Result<T, Error> {
    Err(Error::Eval(m.into()))
}

fn eval<'a>(expr: &Expr, focus: &[Item<'a>], env: &Env<'a>) -> Result<Vec<Item<'a>>, Error> {
    env.budget.spend(1 + focus.len() as u64)?;
    let out = eval_node(expr, focus, env)?;
    env.budget.spend(out.len() as u64)?;
    Ok(out)
}

fn eval_node<'a>(expr: &Expr, focus: &[Item<'a>], env: &Env<'a>) -> Result<Vec<Item<'a>>, Error> {
    Ok(match expr {
        Expr::This => focus.to_vec(),
        Expr::Literal(l) => match l {
            Literal::Empty => vec![],
            Literal::Bool(b) => vec![Item::Bool(*b)],
            Literal::Int(i) => vec![Item::Int(*i)],
            Literal::Dec(d) => vec![Item::Dec(*d)],
            Literal::Str(s) => vec![Item::Str(Cow::Owned(s.clone()))],
        },
        Expr::Constant(name) => constant(name, env)?,
        Expr::Member(base, name) => {
            let base = eval(base, focus, env)?;
            let mut out = Vec::new();
            for item in &base {
                member(item, name, &mut out);
            }
            out
        }
        Expr::Call(base, f, args) => {
            let base = eval(base, focus, env)?;
            call(*f, base, args, env)?
        }
        Expr::Index(base, index) => {
            let base = eval(base, focus, env)?;
            let index = eval(index, focus, env)?;
            match singleton(&index, "an index")? {
                None => vec![],
                Some(i) => match i.prim() {
                    Prim::Int(i) => usize::try_from(i)
                        .ok()
                        .and_then(|i| base.get(i).cloned())
                        .into_iter()
                        .collect(),
                    _ => return eval_err("an index must be an integer"),
                },
            }
        }
        Expr::Negate(e) => {
            let v = eval(e, focus, env)?;
            match singleton(&v, "the operand of -")? {
                None => vec![],
                Some(i) => match i.prim() {
                    Prim::Int(i) => vec![Item::Int(i.checked_neg().ok_or_else(overflow)?)],
                    Prim::Dec(d) => vec![Item::Dec(-d)],
                    _ => return eval_err("- applies to numbers"),
                },
            }
        }
        Expr::Type(is, e, name) => {
            let v = eval(e, focus, env)?;
            match (is, singleton(&v, "the operand of is/as")?) {
                (_, None) => vec![],
                (true, Some(i)) => vec![Item::Bool(i.is_type(name))],
                (false, Some(i)) => {
                    if i.is_type(name) {
                        vec![i.clone()]
                    } else {
                        vec![]
                    }
                }
            }
        }
        Expr::Binary(op, l, r) => binary(*op, l, r, focus, env)?,
    })
}

fn overflow() -> Error {
    Error::Eval("integer overflow".into())
}

fn constant<'a>(name: &str, env: &Env<'a>) -> Result<Vec<Item<'a>>, Error> {
    Ok(match name {
        "rowIndex" => vec![Item::Int(env.row_index)],
        "resource" | "rootResource" | "context" => vec![Item::Node(env.resource, None)],
        "ucum" => vec![Item::Str(Cow::Borrowed("http://unitsofmeasure.org"))],
        _ => match env.constants.get(name) {
            Some(v) => vec![Item::Node(v, None)],
            None => return eval_err(format!("%{name} is not a constant of the view")),
        },
    })
}

/// Adds `item.name` to `out`: arrays flatten, `null` is absent, and a choice element's name
/// (`value`) finds its typed form (`valueQuantity`).
fn member<'a>(item: &Item<'a>, name: &str, out: &mut Vec<Item<'a>>) {
    let Some(object) = item.object() else {
        return;
    };
    // `Patient.name` on a Patient: the type name starts the path.
    if name.starts_with(|c: char| c.is_ascii_uppercase())
        && object.get("resourceType").and_then(Value::as_str) == Some(name)
    {
        out.push(item.clone());
        return;
    }
    let mut push = |v: &'a Value, ty: Option<&'static str>| match v {
        Value::Array(items) => out.extend(
            items
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| Item::Node(v, ty)),
        ),
        Value::Null => {}
        v => out.push(Item::Node(v, ty)),
    };
    if let Some(v) = object.get(name) {
        push(v, None);
        return;
    }
    for (key, v) in object {
        if let Some(suffix) = key.strip_prefix(name)
            && let Some(ty) = choice_type(suffix)
        {
            push(v, Some(ty));
        }
    }
}

/// The one item of `items`, `None` when empty; more than one is an error.
fn singleton<'x, 'a>(items: &'x [Item<'a>], what: &str) -> Result<Option<&'x Item<'a>>, Error> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => eval_err(format!(
            "{what} must be a single value, not {} values",
            items.len()
        )),
    }
}

/// FHIRPath's singleton evaluation as a boolean: empty is unknown, one boolean is itself,
/// any other single item is true.
fn truth(items: &[Item<'_>], what: &str) -> Result<Option<bool>, Error> {
    Ok(singleton(items, what)?.map(|i| match i.prim() {
        Prim::Bool(b) => b,
        _ => true,
    }))
}

fn int_arg<'a>(args: &[Expr], base: &[Item<'a>], env: &Env<'a>) -> Result<usize, Error> {
    let v = eval(&args[0], base, env)?;
    match singleton(&v, "the argument")?.map(Item::prim) {
        Some(Prim::Int(i)) => Ok(usize::try_from(i).unwrap_or(0)),
        _ => eval_err("the argument must be an integer"),
    }
}

fn str_arg<'a>(args: &[Expr], env: &Env<'a>, focus: &[Item<'a>]) -> Result<Option<String>, Error> {
    let Some(arg) = args.first() else {
        return Ok(None);
    };
    let v = eval(arg, focus, env)?;
    match singleton(&v, "the argument")? {
        None => Ok(None),
        Some(i) => match i.prim() {
            Prim::Str(s) => Ok(Some(s.to_owned())),
            _ => eval_err("the argument must be a string"),
        },
    }
}

/// A single string input of a string function.
fn input_str<'x>(base: &'x [Item<'_>], f: Function) -> Result<Option<&'x str>, Error> {
    match singleton(base, &format!("the input of {f:?}"))? {
        None => Ok(None),
        Some(i) => match i.prim() {
            Prim::Str(s) => Ok(Some(s)),
            _ => eval_err(format!("{f:?} applies to strings")),
        },
    }
}

fn call<'a>(
    f: Function,
    base: Vec<Item<'a>>,
    args: &[Expr],
    env: &Env<'a>,
) -> Result<Vec<Item<'a>>, Error> {
    use Function::*;
    let each_true = |base: &[Item<'a>], crit: &Expr| -> Result<Vec<Item<'a>>, Error> {
        let mut out = Vec::new();
        for item in base {
            let r = eval(crit, std::slice::from_ref(item), env)?;
            if truth(&r, "a where() criterion")? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    };
    Ok(match f {
        Where => each_true(&base, &args[0])?,
        Select => {
            let mut out = Vec::new();
            for item in &base {
                let found = eval(&args[0], std::slice::from_ref(item), env)?;
                env.budget.spend(found.len() as u64)?;
                out.extend(found);
            }
            out
        }
        Exists => {
            let base = match args.first() {
                Some(c) => each_true(&base, c)?,
                None => base,
            };
            vec![Item::Bool(!base.is_empty())]
        }
        All => {
            let kept = each_true(&base, &args[0])?;
            vec![Item::Bool(kept.len() == base.len())]
        }
        Empty => vec![Item::Bool(base.is_empty())],
        First => base.into_iter().take(1).collect(),
        Last => base.into_iter().last().into_iter().collect(),
        Tail => base.into_iter().skip(1).collect(),
        Skip => {
            let n = int_arg(args, &base, env)?;
            base.into_iter().skip(n).collect()
        }
        Take => {
            let n = int_arg(args, &base, env)?;
            base.into_iter().take(n).collect()
        }
        Count => vec![Item::Int(i64::try_from(base.len()).unwrap_or(i64::MAX))],
        Not => match truth(&base, "the input of not()")? {
            None => vec![],
            Some(b) => vec![Item::Bool(!b)],
        },
        AllTrue | AnyTrue => {
            let bools: Vec<bool> = base
                .iter()
                .map(|i| match i.prim() {
                    Prim::Bool(b) => Ok(b),
                    _ => eval_err("allTrue()/anyTrue() apply to booleans"),
                })
                .collect::<Result<_, _>>()?;
            vec![Item::Bool(if f == AllTrue {
                bools.iter().all(|b| *b)
            } else {
                bools.iter().any(|b| *b)
            })]
        }
        OfType => {
            let name = args.first().and_then(type_name).unwrap_or_default();
            base.into_iter().filter(|i| i.is_type(name)).collect()
        }
        _ => call_more(f, base, args, env)?,
    })
}

/// The functions on FHIR elements and text (the rest of [`call`]).
fn call_more<'a>(
    f: Function,
    base: Vec<Item<'a>>,
    args: &[Expr],
    env: &Env<'a>,
) -> Result<Vec<Item<'a>>, Error> {
    use Function::*;
    Ok(match f {
        Extension => {
            let url = str_arg(args, env, &base)?.unwrap_or_default();
            let mut out = Vec::new();
            for item in &base {
                let mut exts = Vec::new();
                member(item, "extension", &mut exts);
                out.extend(exts.into_iter().filter(|e| {
                    e.object()
                        .and_then(|o| o.get("url"))
                        .and_then(Value::as_str)
                        == Some(url.as_str())
                }));
            }
            out
        }
        GetResourceKey => base
            .iter()
            .filter_map(|i| i.object()?.get("id")?.as_str())
            .map(|s| Item::Str(Cow::Borrowed(s)))
            .collect(),
        GetReferenceKey => {
            let want = args.first().and_then(type_name);
            base.iter()
                .filter_map(|i| reference_key(i.object()?.get("reference")?.as_str()?, want))
                .map(|s| Item::Str(Cow::Borrowed(s)))
                .collect()
        }
        Join => {
            let sep = str_arg(args, env, &base)?.unwrap_or_default();
            let parts: Vec<String> = base
                .iter()
                .map(|i| match i.prim() {
                    Prim::Str(s) => Ok(s.to_owned()),
                    _ => eval_err("join() applies to strings"),
                })
                .collect::<Result<_, _>>()?;
            vec![Item::Str(Cow::Owned(parts.join(&sep)))]
        }
        Iif => {
            let cond = eval(&args[0], &base, env)?;
            if truth(&cond, "the condition of iif()")? == Some(true) {
                eval(&args[1], &base, env)?
            } else if let Some(otherwise) = args.get(2) {
                eval(otherwise, &base, env)?
            } else {
                vec![]
            }
        }
        HasValue => vec![Item::Bool(
            base.len() == 1 && !matches!(base[0].prim(), Prim::Other),
        )],
        ToString => match singleton(&base, "the input of toString()")? {
            None => vec![],
            Some(i) => match to_text(i) {
                Some(s) => vec![Item::Str(Cow::Owned(s))],
                None => vec![],
            },
        },
        Lower | Upper | Length => match input_str(&base, f)? {
            None => vec![],
            Some(s) => vec![match f {
                Lower => Item::Str(Cow::Owned(s.to_lowercase())),
                Upper => Item::Str(Cow::Owned(s.to_uppercase())),
                _ => Item::Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX)),
            }],
        },
        StartsWith | EndsWith | StrContains => {
            let arg = str_arg(args, env, &base)?;
            match (input_str(&base, f)?, arg) {
                (Some(s), Some(a)) => vec![Item::Bool(match f {
                    StartsWith => s.starts_with(&a),
                    EndsWith => s.ends_with(&a),
                    _ => s.contains(&a),
                })],
                _ => vec![],
            }
        }
        LowBoundary | HighBoundary => match singleton(&base, "the input of a boundary function")? {
            None => vec![],
            Some(i) => boundary(i, f == HighBoundary).into_iter().collect(),
        },
        Distinct => {
            let n = base.len() as u64;
            env.budget.spend(n.saturating_mul(n))?;
            let mut out: Vec<Item<'a>> = Vec::new();
            for item in base {
                if !out.iter().any(|o| equal(o, &item)) {
                    out.push(item);
                }
            }
            out
        }
        Where | Select | Exists | All | Empty | First | Last | Tail | Skip | Take | Count | Not
        | AllTrue | AnyTrue | OfType => {
            return eval_err(format!("{f:?}() is evaluated by call()"));
        }
    })
}

/// `lowBoundary()` / `highBoundary()` (FHIRPath, experimental in SQL-on-FHIR): the least
/// or greatest value a decimal, date, dateTime or time written at its precision may stand
/// for. Dates, times and date-times are recognised by the type their choice element gave
/// them, else by their shape.
fn boundary<'a>(item: &Item<'a>, high: bool) -> Option<Item<'a>> {
    if let Item::Node(Value::Number(n), _) = item {
        let text = n.to_string();
        let digits = text.split_once('.').map_or(0, |(_, d)| d.len());
        let half = 0.5 * 10f64.powi(-i32::try_from(digits).ok()?);
        let v = n.as_f64()?;
        return Some(Item::Dec(if high { v + half } else { v - half }));
    }
    let Prim::Str(text) = item.prim() else {
        return match item.prim() {
            Prim::Int(i) => Some(Item::Dec(i as f64 + if high { 0.5 } else { -0.5 })),
            _ => None,
        };
    };
    let ty = match item {
        Item::Node(_, Some(t)) => Some(*t),
        _ => None,
    };
    let text = text.to_owned();
    let is_time =
        ty == Some("time") || (ty.is_none() && text.len() >= 5 && text.as_bytes()[2] == b':');
    let out = if is_time {
        time_boundary(&text, high)?
    } else {
        let (date, rest) = text.split_at(text.find('T').unwrap_or(text.len()));
        let date = date_boundary(date, high)?;
        let date_time = matches!(ty, Some("dateTime" | "instant")) || !rest.is_empty();
        if !date_time {
            date
        } else if rest.is_empty() {
            let time = if high { "23:59:59.999" } else { "00:00:00.000" };
            format!("{date}T{time}{}", if high { "-12:00" } else { "+14:00" })
        } else {
            let rest = &rest[1..];
            let zone_at = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
            let (time, zone) = rest.split_at(zone_at);
            let zone = if zone.is_empty() {
                if high { "-12:00" } else { "+14:00" }
            } else {
                zone
            };
            format!("{date}T{}{zone}", time_boundary(time, high)?)
        }
    };
    Some(Item::Str(Cow::Owned(out)))
}

/// A date of precision year, month or day at its first or last day.
fn date_boundary(date: &str, high: bool) -> Option<String> {
    let parts: Vec<&str> = date.split('-').collect();
    let year: i32 = parts.first()?.parse().ok()?;
    let month: u32 = match parts.get(1) {
        Some(m) => m.parse().ok()?,
        None if high => 12,
        None => 1,
    };
    let day: u32 = match parts.get(2) {
        Some(d) => d.parse().ok()?,
        None if high => days_in_month(year, month)?,
        None => 1,
    };
    if parts.len() > 3
        || !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)?
    {
        return None;
    }
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

fn days_in_month(year: i32, month: u32) -> Option<u32> {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    })
}

/// A time of precision hour, minute, second or fraction at its first or last millisecond.
fn time_boundary(time: &str, high: bool) -> Option<String> {
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let parts: Vec<&str> = hms.split(':').collect();
    let field = |i: usize, max: &str, min: &str| -> Option<String> {
        match parts.get(i) {
            Some(p) if p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some((*p).to_owned())
            }
            Some(_) => None,
            None => Some(if high { max } else { min }.to_owned()),
        }
    };
    let (h, m, s) = (
        field(0, "23", "00")?,
        field(1, "59", "00")?,
        field(2, "59", "00")?,
    );
    let mut millis: String = fraction.chars().take(3).collect();
    while millis.len() < 3 {
        millis.push(if high { '9' } else { '0' });
    }
    if parts.len() > 3 || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!("{h}:{m}:{s}.{millis}"))
}

/// The key of a reference (`Patient/p1`, `https://x/fhir/Patient/p1/_history/2`): its id,
/// when the referenced type is `want` (or any type when `want` is absent).
fn reference_key<'r>(reference: &'r str, want: Option<&str>) -> Option<&'r str> {
    let reference = reference.split("/_history").next()?;
    let mut parts = reference.rsplit('/');
    let id = parts
        .next()
        .filter(|s| !s.is_empty() && !s.starts_with('#'))?;
    let ty = parts.next();
    match want {
        None => Some(id),
        Some(w) => (ty == Some(w.strip_prefix("FHIR.").unwrap_or(w))).then_some(id),
    }
}

/// A primitive item as text (decimals as written in the JSON where they come from it).
pub(crate) fn to_text(item: &Item<'_>) -> Option<String> {
    match item {
        Item::Node(Value::Number(n), _) => Some(n.to_string()),
        other => match other.prim() {
            Prim::Bool(b) => Some(b.to_string()),
            Prim::Int(i) => Some(i.to_string()),
            Prim::Dec(d) => Some(d.to_string()),
            Prim::Str(s) => Some(s.to_owned()),
            Prim::Other => None,
        },
    }
}

fn number(p: Prim<'_>) -> Option<f64> {
    match p {
        Prim::Int(i) => Some(i as f64),
        Prim::Dec(d) => Some(d),
        _ => None,
    }
}

fn equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a.prim(), b.prim()) {
        (Prim::Int(x), Prim::Int(y)) => x == y,
        (Prim::Str(x), Prim::Str(y)) => x == y,
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (x, y) => match (number(x), number(y)) {
            (Some(x), Some(y)) => x == y,
            _ => matches!((x, y), (Prim::Other, Prim::Other)) && a.to_json() == b.to_json(),
        },
    }
}

fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a.prim(), b.prim()) {
        (Prim::Str(x), Prim::Str(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => equal(a, b),
    }
}

fn compare(a: &Item<'_>, b: &Item<'_>) -> Result<std::cmp::Ordering, Error> {
    match (a.prim(), b.prim()) {
        (Prim::Str(x), Prim::Str(y)) => Ok(x.cmp(y)),
        (Prim::Int(x), Prim::Int(y)) => Ok(x.cmp(&y)),
        (x, y) => match (number(x), number(y)) {
            (Some(x), Some(y)) => x
                .partial_cmp(&y)
                .ok_or_else(|| Error::Eval("cannot compare NaN".into())),
            _ => eval_err("cannot compare these values"),
        },
    }
}

fn binary<'a>(
    op: BinOp,
    l: &Expr,
    r: &Expr,
    focus: &[Item<'a>],
    env: &Env<'a>,
) -> Result<Vec<Item<'a>>, Error> {
    let left = eval(l, focus, env)?;
    // `and`/`or`/`implies` need the right side only when the left does not decide.
    match op {
        BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies => {
            let a = truth(&left, "an operand of and/or")?;
            let decided = match (op, a) {
                (BinOp::And, Some(false)) => Some(false),
                (BinOp::Or, Some(true)) => Some(true),
                (BinOp::Implies, Some(false)) => Some(true),
                _ => None,
            };
            if let Some(d) = decided {
                return Ok(vec![Item::Bool(d)]);
            }
            let right = eval(r, focus, env)?;
            let b = truth(&right, "an operand of and/or")?;
            let v = match op {
                BinOp::And => match (a, b) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Or => match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                BinOp::Xor => a.zip(b).map(|(a, b)| a != b),
                _ => match (a, b) {
                    (Some(true), b) => b,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            };
            return Ok(v.map(Item::Bool).into_iter().collect());
        }
        _ => {}
    }
    let right = eval(r, focus, env)?;
    Ok(match op {
        BinOp::Union => {
            let n = (left.len() + right.len()) as u64;
            env.budget.spend(n.saturating_mul(n))?;
            let mut out: Vec<Item<'a>> = Vec::new();
            for item in left.into_iter().chain(right) {
                if !out.iter().any(|o| equal(o, &item)) {
                    out.push(item);
                }
            }
            out
        }
        BinOp::Eq | BinOp::Ne | BinOp::Equiv | BinOp::NotEquiv => {
            let equiv = matches!(op, BinOp::Equiv | BinOp::NotEquiv);
            if !equiv && (left.is_empty() || right.is_empty()) {
                return Ok(vec![]);
            }
            let same = left.len() == right.len()
                && left.iter().zip(&right).all(
                    |(a, b)| {
                        if equiv { equivalent(a, b) } else { equal(a, b) }
                    },
                );
            vec![Item::Bool(same == matches!(op, BinOp::Eq | BinOp::Equiv))]
        }
        BinOp::In | BinOp::Contains => {
            let (needle, hay) = if op == BinOp::In {
                (&left, &right)
            } else {
                (&right, &left)
            };
            match singleton(needle, "the operand of in/contains")? {
                None => vec![],
                Some(n) => vec![Item::Bool(hay.iter().any(|h| equal(h, n)))],
            }
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(a), Some(b)) = (
                singleton(&left, "an operand of a comparison")?,
                singleton(&right, "an operand of a comparison")?,
            ) else {
                return Ok(vec![]);
            };
            let o = compare(a, b)?;
            vec![Item::Bool(match op {
                BinOp::Lt => o.is_lt(),
                BinOp::Le => o.is_le(),
                BinOp::Gt => o.is_gt(),
                _ => o.is_ge(),
            })]
        }
        BinOp::Concat => {
            let text = |v: &[Item<'_>]| -> Result<String, Error> {
                Ok(singleton(v, "an operand of &")?
                    .and_then(to_text)
                    .unwrap_or_default())
            };
            vec![Item::Str(Cow::Owned(text(&left)? + &text(&right)?))]
        }
        _ => arithmetic(op, &left, &right)?,
    })
}

fn arithmetic<'a>(
    op: BinOp,
    left: &[Item<'a>],
    right: &[Item<'a>],
) -> Result<Vec<Item<'a>>, Error> {
    let (Some(a), Some(b)) = (
        singleton(left, "an operand of arithmetic")?,
        singleton(right, "an operand of arithmetic")?,
    ) else {
        return Ok(vec![]);
    };
    if let (BinOp::Add, Prim::Str(x), Prim::Str(y)) = (op, a.prim(), b.prim()) {
        return Ok(vec![Item::Str(Cow::Owned(format!("{x}{y}")))]);
    }
    if let (Prim::Int(x), Prim::Int(y)) = (a.prim(), b.prim()) {
        let v = match op {
            BinOp::Add => x.checked_add(y),
            BinOp::Sub => x.checked_sub(y),
            BinOp::Mul => x.checked_mul(y),
            BinOp::IntDiv if y == 0 => return Ok(vec![]),
            BinOp::IntDiv => x.checked_div(y),
            BinOp::Mod if y == 0 => return Ok(vec![]),
            BinOp::Mod => x.checked_rem(y),
            _ => None,
        };
        if op != BinOp::Div {
            return Ok(vec![Item::Int(v.ok_or_else(overflow)?)]);
        }
    }
    let (Some(x), Some(y)) = (number(a.prim()), number(b.prim())) else {
        return eval_err("arithmetic applies to numbers");
    };
    let v = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div | BinOp::IntDiv | BinOp::Mod if y == 0.0 => return Ok(vec![]),
        BinOp::Div => x / y,
        BinOp::IntDiv => (x / y).trunc(),
        _ => x % y,
    };
    Ok(vec![if op == BinOp::IntDiv {
        Item::Int(v as i64)
    } else {
        Item::Dec(v)
    }])
}
