//! The CEL environment of policies: the env, JSON to CEL values, and compiling with load-time checks.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::{Context, Env, ExecutionError, Program, Value};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// The variables a policy expression may read.
pub const VARIABLES: [&str; 9] =
    ["image", "signatures", "attestations", "provenance", "object", "namespace", "request", "now", "evidence"];

/// Longest expression text accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// Why an expression does not compile. `Display` names the expression; the loader adds file and line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("syntax error in `{expression}`: {message}")]
    Syntax { expression: String, message: String },
    #[error("unknown variable `{name}` in `{expression}` (known: {})", VARIABLES.join(", "))]
    UnknownVariable { expression: String, name: String },
    #[error("unknown function `{name}` in `{expression}`")]
    UnknownFunction { expression: String, name: String },
    #[error("`{expression}` must evaluate to {expected}, but {found}")]
    WrongType { expression: String, expected: &'static str, found: String },
    #[error("`{name}` in `{expression}` needs a literal bound of at most {MAX_RANGE}")]
    Unbounded { expression: String, name: String },
    #[error(
        "`{expression}` nests loops over literal lists and ranges of {iterations} iterations in all, more than \
         {MAX_ITERATIONS}"
    )]
    TooManyIterations { expression: String, iterations: u64 },
    #[error("expression is empty")]
    Empty,
    #[error("expression `{prefix}…` is {len} bytes, more than {MAX_EXPRESSION_BYTES}")]
    TooLong { prefix: String, len: usize },
    #[error("CEL environment: {0}")]
    Environment(String),
}

/// What an expression must evaluate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A `validations[].expression`.
    Bool,
    /// A `validations[].messageExpression`.
    String,
    /// An `evidence[].from`: a list (or one map) of resource descriptors.
    List,
}

impl Expect {
    fn name(self) -> &'static str {
        match self {
            Expect::Bool => "bool",
            Expect::String => "string",
            Expect::List => "list",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Expect::Bool, Value::Bool(_))
                | (Expect::String, Value::String(_))
                | (Expect::List, Value::List(_) | Value::Map(_))
        )
    }
}

/// A compiled expression with its source text; cheap to share, `Send + Sync`.
#[derive(Clone)]
pub struct Expression {
    source: Arc<str>,
    program: Arc<Program>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl Expression {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression reads the variable `name` (anywhere, at any depth).
    pub fn reads(&self, name: &str) -> bool {
        self.program.references().has_variable(name)
    }

    /// Evaluates against `context`; errors are the CEL runtime error as text.
    pub(crate) fn execute(&self, context: &Context<'_, '_>) -> Result<Value, String> {
        self.program.execute(context).map_err(|e| e.to_string())
    }
}

/// The policy CEL environment: stdlib plus the strings, lists, math and encoders extensions.
///
/// Built once; compiling checks syntax, variables, functions and (on a sample context) the result type.
pub struct CelEngine {
    env: Arc<Env>,
    sample: HashMap<&'static str, Value>,
}

impl std::fmt::Debug for CelEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CelEngine")
    }
}

impl CelEngine {
    /// The environment, with `sample` variables used to detect expressions of the wrong type.
    pub(crate) fn with_sample(sample: HashMap<&'static str, Value>) -> Result<Self, CompileError> {
        let mut env = Env::stdlib();
        for ext in [
            cel::extensions::strings as fn(&mut Env) -> _,
            cel::extensions::lists,
            cel::extensions::math,
            cel::extensions::encoders,
        ] {
            env.add_extension(ext).map_err(|e| CompileError::Environment(e.to_string()))?;
        }
        Ok(CelEngine { env: Arc::new(env), sample })
    }

    /// A fresh context with this environment's functions and no variables.
    pub(crate) fn context(&self) -> Context<'static, 'static> {
        Context::with_env(Arc::clone(&self.env))
    }

    /// Compiles `source`, rejecting syntax errors, unknown variables and functions, and expressions that
    /// evaluate to something other than `expect`: statically for literals and arithmetic at the root, and by
    /// evaluating against a representative sample context (a runtime error on the sample is not a load error,
    /// since the sample cannot hold every attestation a policy names).
    pub fn compile(&self, source: &str, expect: Expect) -> Result<Expression, CompileError> {
        if source.trim().is_empty() {
            return Err(CompileError::Empty);
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            let prefix = source.chars().take(60).collect();
            return Err(CompileError::TooLong { prefix, len: source.len() });
        }
        let expression = source.to_string();
        let program = self.env.compile(source).map_err(|e| {
            let mut message =
                e.to_string().lines().next().unwrap_or_default().trim_start_matches("ERROR: ").to_string();
            if message.ends_with("reserved identifier: namespace") {
                // CEL reserves `namespace`; Kubernetes CEL has the same problem and offers `request.namespace`.
                message.push_str(" (use request.namespace)");
            }
            CompileError::Syntax { expression: expression.clone(), message }
        })?;
        let mut checker = Checker { engine: self, scopes: Vec::new(), problem: None, iterations: 1 };
        checker.walk(program.expression());
        match checker.problem {
            Some(Problem::Variable(name)) => return Err(CompileError::UnknownVariable { expression, name }),
            Some(Problem::Function(name)) => return Err(CompileError::UnknownFunction { expression, name }),
            Some(Problem::Unbounded(name)) => return Err(CompileError::Unbounded { expression, name }),
            Some(Problem::Iterations(iterations)) => {
                return Err(CompileError::TooManyIterations { expression, iterations });
            }
            None => {}
        }
        let fits = |kind: &&str| *kind == expect.name() || (expect == Expect::List && *kind == "map");
        if let Some(found) = static_kind(program.expression()).filter(|kind| !fits(kind)) {
            return Err(CompileError::WrongType {
                expression,
                expected: expect.name(),
                found: format!("is a {found}"),
            });
        }
        let compiled = Expression { source: Arc::from(source), program: Arc::new(program) };
        let mut context = self.context();
        for (name, value) in &self.sample {
            context.add_variable_from_value(*name, value.clone());
        }
        match catch_unwind(AssertUnwindSafe(|| compiled.program.execute(&context))) {
            Ok(Ok(value)) if !expect.accepts(&value) => Err(CompileError::WrongType {
                expression,
                expected: expect.name(),
                found: format!("gave {} on a sample image", type_name(&value)),
            }),
            _ => Ok(compiled),
        }
    }

    /// Whether `probe` (a call with no arguments) reaches a declared function.
    fn declares(&self, probe: &str) -> bool {
        let Ok(program) = self.env.compile(probe) else {
            return false;
        };
        let context = self.context();
        !matches!(
            catch_unwind(AssertUnwindSafe(|| program.execute(&context))),
            Ok(Err(ExecutionError::UndeclaredReference(_)))
        )
    }
}

enum Problem {
    Variable(String),
    Function(String),
    Unbounded(String),
    Iterations(u64),
}

/// Largest literal `lists.range` bound accepted.
pub const MAX_RANGE: i64 = 10_000;

fn small_literal(arg: Option<&IdedExpr>) -> bool {
    matches!(arg, Some(IdedExpr { expr: Expr::Literal(LiteralValue::Int(n)), .. }) if *n.inner() <= MAX_RANGE)
}

/// Most iterations loops over literal lists and ranges may make in all, nested ones multiplying: each is within
/// [`MAX_RANGE`] or the expression's size, but three nested in 4 KiB would loop a billion times at every review.
pub const MAX_ITERATIONS: u64 = 100_000;

/// How many elements `e` has when the expression alone decides it: a list literal, a `lists.range` of a literal,
/// or a `map`/`filter` over one of those. `None` for what the input decides (bounded by the input's limits).
fn literal_length(e: &IdedExpr) -> Option<u64> {
    match &e.expr {
        Expr::List(list) => Some(list.elements.len() as u64),
        Expr::Call(call) if call.func_name == "range" => match (call.target.as_deref(), call.args.first()) {
            (
                Some(IdedExpr { expr: Expr::Ident(ns), .. }),
                Some(IdedExpr { expr: Expr::Literal(LiteralValue::Int(n)), .. }),
            ) if ns == "lists" => u64::try_from(*n.inner()).ok(),
            _ => None,
        },
        Expr::Comprehension(c) => literal_length(&c.iter_range),
        _ => None,
    }
}

/// Walks the AST with the comprehension scopes, recording the first unknown variable or function.
struct Checker<'a> {
    engine: &'a CelEngine,
    scopes: Vec<String>,
    problem: Option<Problem>,
    /// Iterations of the enclosing loops over literal lists and ranges, multiplied.
    iterations: u64,
}

impl Checker<'_> {
    fn bound(&self, name: &str) -> bool {
        VARIABLES.contains(&name) || self.scopes.iter().any(|s| s == name)
    }

    fn walk(&mut self, e: &IdedExpr) {
        if self.problem.is_some() {
            return;
        }
        match &e.expr {
            Expr::Ident(name) => {
                if !name.starts_with('@') && !self.bound(name) && !self.engine.declares(name) {
                    self.problem = Some(Problem::Variable(name.clone()));
                }
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let generated = !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    || (name.starts_with('_') && name.ends_with('_'));
                match call.target.as_deref() {
                    Some(IdedExpr { expr: Expr::Ident(ns), .. }) if !self.bound(ns) => {
                        let qualified = format!("{ns}.{name}");
                        if !generated && !self.engine.declares(&format!("{qualified}()")) {
                            self.problem = Some(Problem::Function(qualified));
                        } else if qualified == "lists.range" && !small_literal(call.args.first()) {
                            // The only way to build a list not bounded by the input's size.
                            self.problem = Some(Problem::Unbounded(qualified));
                        }
                    }
                    target => {
                        let probe = if target.is_some() { format!("null.{name}()") } else { format!("{name}()") };
                        if !generated && !self.engine.declares(&probe) {
                            self.problem = Some(Problem::Function(name.to_string()));
                        }
                        if let Some(t) = target {
                            self.walk(t);
                        }
                    }
                }
                call.args.iter().for_each(|a| self.walk(a));
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let outer = self.iterations;
                self.iterations = outer.saturating_mul(literal_length(&c.iter_range).unwrap_or(1));
                if self.iterations > MAX_ITERATIONS {
                    self.problem = Some(Problem::Iterations(self.iterations));
                    return;
                }
                let pushed = 2 + usize::from(c.iter_var2.is_some());
                self.scopes.push(c.iter_var.clone());
                self.scopes.push(c.accu_var.clone());
                self.scopes.extend(c.iter_var2.clone());
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                // The result is computed once, after the loop.
                self.iterations = outer;
                self.walk(&c.result);
                self.scopes.truncate(self.scopes.len() - pushed);
            }
            Expr::List(list) => list.elements.iter().for_each(|x| self.walk(x)),
            Expr::Map(map) => map.entries.iter().for_each(|x| self.walk_entry(&x.expr)),
            Expr::Struct(st) => st.entries.iter().for_each(|x| self.walk_entry(&x.expr)),
            Expr::Select(select) => self.walk(&select.operand),
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn walk_entry(&mut self, entry: &EntryExpr) {
        match entry {
            EntryExpr::StructField(field) => self.walk(&field.value),
            EntryExpr::MapEntry(entry) => {
                self.walk(&entry.key);
                self.walk(&entry.value);
            }
        }
    }
}

/// The result kind of an expression whose root alone decides it, as `Expect::name` spells it.
fn static_kind(e: &IdedExpr) -> Option<&'static str> {
    match &e.expr {
        Expr::Literal(LiteralValue::Boolean(_)) => Some("bool"),
        Expr::Literal(LiteralValue::String(_)) => Some("string"),
        Expr::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
        Expr::Literal(LiteralValue::Double(_)) => Some("double"),
        Expr::Literal(LiteralValue::Int(_)) => Some("int"),
        Expr::Literal(LiteralValue::UInt(_)) => Some("uint"),
        Expr::Literal(LiteralValue::Null) => Some("null"),
        Expr::List(_) => Some("list"),
        Expr::Map(_) => Some("map"),
        Expr::Call(call) if call.target.is_none() => match call.func_name.as_str() {
            "_-_" | "_*_" | "_/_" | "_%_" | "-_" => Some("number"),
            "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" | "@in" | "!_" | "_&&_" | "_||_" => Some("bool"),
            _ => None,
        },
        _ => None,
    }
}

/// The CEL type name of a value, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Function(..) => "function",
        Value::Int(_) => "int",
        Value::UInt(_) => "uint",
        Value::Float(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::Bool(_) => "bool",
        Value::Duration(_) => "duration",
        Value::Timestamp(_) => "timestamp",
        Value::Opaque(_) => "opaque",
        Value::Struct(_) => "struct",
        Value::Null => "null",
    }
}

/// JSON to CEL: integers become signed `int` (so `x + 1` works), other numbers `double`.
///
/// An integer above `i64::MAX` stays `uint`: no signed value holds it.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(json_to_value).collect())),
        J::Object(map) => {
            let entries: HashMap<cel::objects::Key, Value> =
                map.iter().map(|(k, v)| (cel::objects::Key::from(k.as_str()), json_to_value(v))).collect();
            Value::Map(cel::objects::Map::from(entries))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn engine() -> CelEngine {
        CelEngine::new().unwrap()
    }

    #[test]
    fn accepts_what_policies_write() {
        let e = engine();
        for source in [
            r#"provenance.builder.id == "https://tekton.dev/chains/v2""#,
            r#"provenance.materials.exists(m, m.uri.startsWith("git+https://github.com/acme/"))"#,
            r#"provenance.materials.all(m, has(m.digest.sha1) || has(m.digest.sha256))"#,
            r#"now - timestamp(provenance.finishedOn) < duration("720h")"#,
            r#"attestations.provenance.map(s, s.predicateType).exists(t, t.startsWith("https://slsa.dev/"))"#,
            r#"size(signatures) > 0 && signatures.all(s, s.authority in ["chains"])"#,
            r#"image.registry.lowerAscii() == "registry.example.com""#,
            r#"math.greatest(1, 2) == 2 && lists.range(2).size() == 2"#,
            r#"base64.encode(b"a") == "YQ==" && strings.quote("a") != """#,
            r#"provenance.?invocation.?parameters.?IMAGE.orValue("") != """#,
            r#"type(request.namespace) == string && request.namespace.split("-").size() >= 1"#,
            r#"request.operation == "CREATE" && object.kind == "Pod""#,
            r#"[1, 2].map(x, x + 1).filter(y, y > 2).size() == 1"#,
            r#"[[1], [2]].exists(l, l.exists(x, l.size() == x))"#,
            r#"has(provenance.invocation.parameters.IMAGE)"#,
            r#"attestations.nope[0].predicate.x == 1"#,
            // Loops over the input are bounded by the input's limits; over literals, 100,000 iterations in all.
            r#"attestations.provenance.all(a, a.predicate.materials.all(m, attestations.provenance.exists(b, true)))"#,
            r#"lists.range(10000).all(i, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].exists(j, i != j))"#,
            r#"lists.range(1000).map(i, i).size() == 1000 && lists.range(1000).map(i, i).size() == 1000"#,
        ] {
            let compiled = e.compile(source, Expect::Bool);
            assert!(compiled.is_ok(), "{source}: {compiled:?}");
        }
        assert!(e.compile(r#""built from " + provenance.materials[0].uri"#, Expect::String).is_ok());
    }

    #[test]
    fn rejects_with_the_expression_and_the_reason() {
        let e = engine();
        let cases: [(&str, &str); 21] = [
            ("url(image.ref) == 'x'", "unknown function `url`"),
            ("namespace == 'prod'", "reserved identifier: namespace (use request.namespace)"),
            ("provenance.builder.id ==", "syntax error"),
            ("provenance.builder.id == 'x' &&& true", "syntax error"),
            ("provenanse.builder.id == 'x'", "unknown variable `provenanse`"),
            ("[1].exists(m, n > 0)", "unknown variable `n`"),
            ("[1].exists(m, m > 0) && m == 1", "unknown variable `m`"),
            ("provenance.materials.isSorted()", "unknown function `isSorted`"),
            ("url(image.ref).getHost() == 'x'", "unknown function `getHost`"),
            ("semver('1.0.0') == 'x'", "unknown function `semver`"),
            ("math.nope(1) == 1", "unknown function `math.nope`"),
            ("[1].all(i, v, v > 0)", "unknown function `all`"),
            ("cel.bind(x, 1, x == 1)", "unknown function `cel.bind`"),
            ("lists.range(100000000).size() > 0", "`lists.range` in"),
            ("lists.range(size(image.ref)).size() > 0", "needs a literal bound of at most 10000"),
            // Loops within the bounds one by one, but not nested: 10,000 × 10,000 iterations at every review.
            ("lists.range(10000).all(i, lists.range(10000).all(j, i != j))", "100000000 iterations in all"),
            ("lists.range(1000).map(i, i * 2).all(a, lists.range(1000).exists(b, a == b))", "1000000 iterations"),
            (
                "[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, lists.range(1001).all(c, a + b != c)))",
                "more than 100000",
            ),
            ("provenance.builder.id", "must evaluate to bool, but gave string on a sample image"),
            ("1 + 1", "must evaluate to bool, but gave int on a sample image"),
            ("'yes'", "must evaluate to bool, but is a string"),
        ];
        for (source, want) in cases {
            let err = e.compile(source, Expect::Bool).unwrap_err().to_string();
            assert!(err.contains(want), "{source}: {err}");
            assert!(err.contains(source), "{source} not quoted in: {err}");
        }
        assert!(matches!(e.compile("  ", Expect::Bool), Err(CompileError::Empty)));
        assert!(matches!(
            e.compile(&"a".repeat(MAX_EXPRESSION_BYTES + 1), Expect::Bool),
            Err(CompileError::TooLong { .. })
        ));
        let err = e.compile("size(signatures) > 0", Expect::String).unwrap_err().to_string();
        assert!(err.contains("must evaluate to string"), "{err}");
    }

    #[test]
    fn the_function_probe_knows_stdlib_and_extensions_and_nothing_else() {
        let e = engine();
        let known = [
            "size()",
            "null.size()",
            "null.contains()",
            "null.startsWith()",
            "null.endsWith()",
            "null.matches()",
            "timestamp()",
            "duration()",
            "int()",
            "uint()",
            "double()",
            "string()",
            "bytes()",
            "bool()",
            "type()",
            "dyn()",
            "null.getFullYear()",
            "null.getHours()",
            "null.getDayOfWeek()",
            "optional.of()",
            "optional.none()",
            "null.orValue()",
            "null.hasValue()",
            "null.value()",
            "null.lowerAscii()",
            "null.upperAscii()",
            "null.split()",
            "null.join()",
            "null.replace()",
            "null.substring()",
            "null.trim()",
            "null.indexOf()",
            "null.lastIndexOf()",
            "null.charAt()",
            "null.format()",
            "null.reverse()",
            "strings.quote()",
            "null.slice()",
            "null.flatten()",
            "null.distinct()",
            "null.sort()",
            "lists.range()",
            "math.ceil()",
            "math.floor()",
            "math.round()",
            "math.abs()",
            "math.sign()",
            "math.isNaN()",
            "math.bitAnd()",
            "base64.encode()",
            "base64.decode()",
        ];
        let unknown: Vec<&str> = known.into_iter().filter(|probe| !e.declares(probe)).collect();
        assert!(unknown.is_empty(), "{unknown:?}");
        for probe in [
            "isSorted()",
            "null.isSorted()",
            "url()",
            "null.getHost()",
            "semver()",
            "quantity()",
            "ip()",
            "cidr()",
            "math.nope()",
            "strings.nope()",
            "nope.fn()",
            "null.transformList()",
            "cel.bind()",
            "null.find()",
        ] {
            assert!(!e.declares(probe), "{probe}");
        }
    }

    #[test]
    fn only_the_policy_module_imports_cel() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out)
                } else if path.extension().is_some_and(|x| x == "rs") {
                    out.push(path)
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["src", "tests", "benches"].map(|d| root.join(d)).into_iter().filter(|d| d.is_dir()) {
            walk(&dir, &mut files);
        }
        assert!(files.len() > 5);
        let policy = root.join("src/policy");
        for file in files.iter().filter(|f| !f.starts_with(&policy)) {
            let text = std::fs::read_to_string(file).unwrap();
            // `cel::` not preceded by `::` or an identifier character is the crate itself.
            let bytes = text.as_bytes();
            let crate_path = text.match_indices("cel::").any(|(i, _)| {
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':')
            });
            assert!(!crate_path && !text.contains("extern crate cel"), "{} uses the cel crate", file.display());
        }
    }

    #[test]
    fn a_runtime_error_on_the_sample_is_not_a_load_error() {
        // The sample has no attestation called `sbom`; the expression is fine for policies that require one.
        assert!(engine().compile("attestations.sbom.size() > 0", Expect::Bool).is_ok());
    }

    #[test]
    fn json_integers_are_signed_and_floats_stay_doubles() {
        let v = json_to_value(&json!({"n": 3, "neg": -2, "f": 1.5, "big": u64::MAX, "s": "x", "l": [1, null, true]}));
        let Value::Map(map) = &v else { panic!("not a map: {v:?}") };
        assert_eq!(map.map.get(&cel::objects::Key::from("n")), Some(&Value::Int(3)));
        assert_eq!(map.map.get(&cel::objects::Key::from("neg")), Some(&Value::Int(-2)));
        assert_eq!(map.map.get(&cel::objects::Key::from("f")), Some(&Value::Float(1.5)));
        assert_eq!(map.map.get(&cel::objects::Key::from("big")), Some(&Value::UInt(u64::MAX)));

        let e = engine();
        let program =
            e.compile("x.n + 1 == 4 && type(x.n) == int && x.f * 2.0 == 3.0 && x.l.size() == 3", Expect::Bool);
        let mut context = e.context();
        context.add_variable_from_value("x", v);
        assert!(program.unwrap_err().to_string().contains("unknown variable `x`"));
        let raw = e.env.compile("x.n + 1 == 4 && type(x.n) == int && x.f * 2.0 == 3.0 && x.l.size() == 3").unwrap();
        assert_eq!(raw.execute(&context), Ok(Value::Bool(true)));
        let wrong = e.env.compile("x.n + 1u == 4u").unwrap();
        assert!(wrong.execute(&context).is_err(), "int + uint must not mix");
    }
}
