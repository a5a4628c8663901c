//! The syntax tree of a query: `SELECT [TOP n] <projections> FROM <collection> [WHERE <expr>]
//! [GROUP BY <path>]`, and of the expressions that conditions are made of.

use serde_json::Value;

/// A property path such as `properties.reported.fw`, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(pub Vec<String>);

impl Path {
    /// Whether both name the same property (attribute names compare case-insensitively).
    pub fn same_as(&self, other: &Path) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
}

/// An expression, evaluated against one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A property of the document.
    Path(Path),
    /// A JSON constant (string, number, boolean, null or array).
    Constant(Value),
    /// The `undefined` constant.
    Undefined,
    /// `NOT e`.
    Not(Box<Expr>),
    /// `-e`.
    Negate(Box<Expr>),
    /// `a op b`.
    Binary(Box<Expr>, BinaryOp, Box<Expr>),
    /// `e IN [..]` or, `negated`, `e NIN [..]`.
    In {
        /// The tested value.
        value: Box<Expr>,
        /// The constant array.
        list: Vec<Value>,
        /// `NIN`.
        negated: bool,
    },
    /// A built-in function call.
    Call(Function, Vec<Expr>),
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    /// `<`
    Lt,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Mod,
}

/// The functions of twin queries and target conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `IS_DEFINED(property)`: the property exists (even if `null`).
    IsDefined,
    /// `IS_ARRAY(e)`
    IsArray,
    /// `IS_BOOL(e)`
    IsBool,
    /// `IS_NULL(e)`
    IsNull,
    /// `IS_NUMBER(e)`
    IsNumber,
    /// `IS_OBJECT(e)`
    IsObject,
    /// `IS_PRIMITIVE(e)`: string, number, boolean or null.
    IsPrimitive,
    /// `IS_STRING(e)`
    IsString,
    /// `STARTSWITH(s, prefix)` (IoT Hub spells it without the underscore).
    StartsWith,
    /// `ENDSWITH(s, suffix)`
    EndsWith,
    /// `ARRAY_CONTAINS(array, value)`: a primitive element of the array equals the value (the
    /// Azure CLI's `az iot hub device-identity children list` sends
    /// `array_contains(parentScopes, '…')`).
    ArrayContains,
}

impl Function {
    /// Every function with its name in the language and its number of arguments.
    pub const ALL: [(Function, &'static str, usize); 11] = [
        (Function::IsDefined, "IS_DEFINED", 1),
        (Function::IsArray, "IS_ARRAY", 1),
        (Function::IsBool, "IS_BOOL", 1),
        (Function::IsNull, "IS_NULL", 1),
        (Function::IsNumber, "IS_NUMBER", 1),
        (Function::IsObject, "IS_OBJECT", 1),
        (Function::IsPrimitive, "IS_PRIMITIVE", 1),
        (Function::IsString, "IS_STRING", 1),
        (Function::StartsWith, "STARTSWITH", 2),
        (Function::EndsWith, "ENDSWITH", 2),
        (Function::ArrayContains, "ARRAY_CONTAINS", 2),
    ];
}

/// The collection a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    Modules,
    /// `FROM devices.jobs`: each device's part in each scheduled job (paths in the condition
    /// are written `devices.jobs.<property>`).
    Jobs,
}

/// An aggregate function of the SELECT list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// `COUNT()`
    Count,
    /// `AVG(path)`
    Avg,
    /// `SUM(path)`
    Sum,
    /// `MIN(path)`
    Min,
    /// `MAX(path)`
    Max,
}

/// What one projection takes from a document or a group.
#[derive(Debug, Clone, PartialEq)]
pub enum Projected {
    /// A property.
    Path(Path),
    /// An aggregate over the group (`COUNT()` has no path).
    Aggregate(Aggregate, Option<Path>),
}

/// One element of the SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    /// What it takes.
    pub value: Projected,
    /// `AS alias`; without one a property keeps its own name.
    pub alias: Option<String>,
}

/// The SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `SELECT *`: whole documents.
    All,
    /// Projections and aggregates: raw JSON objects.
    Items(Vec<Projection>),
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// `TOP n`.
    pub top: Option<usize>,
    /// The SELECT list.
    pub select: Select,
    /// The FROM collection.
    pub from: Collection,
    /// The WHERE condition.
    pub filter: Option<Expr>,
    /// The GROUP BY property.
    pub group_by: Option<Path>,
}
