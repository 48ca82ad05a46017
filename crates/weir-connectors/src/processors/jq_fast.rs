//! A direct evaluator for the jq programs pipelines use most: field paths,
//! comparisons, `and`/`or`/`not`, arithmetic, `if`, `//`, object and array
//! construction, updates and assignments of field paths (`.a |= f`,
//! `.a = f`), string slices with constant bounds, `type`, `length`,
//! `ascii_downcase`/`ascii_upcase`, `floor`/`round`/`ceil`, `tonumber`,
//! `ltrimstr`/`rtrimstr` and `sub`/`gsub` with constant text (no regex
//! syntax), `map(f)` and `add`.
//!
//! jaq interprets a program through boxed iterators, and its standard
//! functions (`type`, `not`, `true`) are themselves jq definitions: a
//! filter `type == "object"` costs about 3 µs per record, most of B4's time
//! (BENCHMARKS.md, issue 9). Such programs give exactly one output for
//! every input they do not reject, so they can be evaluated as a plain
//! expression tree over [`Val`], with jaq's own operators (`Val`'s `+`,
//! `==`, `<`, ...) doing the work.
//!
//! The evaluator only ever *succeeds or declines*: on anything it does not
//! handle (a type error, an empty result, a value it does not model) it
//! returns `None`, and the caller runs the whole program in jaq from the
//! start. jq programs are pure, so running again is safe, and every error,
//! with its message, still comes from jaq. A program is compiled here only
//! if every part of it is in the subset; otherwise jaq runs it always.
//! `jq.rs`'s tests check the two against each other on random programs
//! and records (`fast_evaluation_agrees_with_jaq`).
//!
//! The direct evaluation runs outside the stage's per-record limits (no
//! budget, no watchdog), so it only takes work linear in the record: what
//! the record could blow up, `"s" * n` (repetition) and `add` over
//! strings or arrays (quadratic copying), declines and runs in jaq, under
//! the limits.

use jaq_core::load::parse::{BinaryOp, Term};
use jaq_core::load::{self, lex::StrPart};
use jaq_core::ops::{Cmp, Math};
use jaq_core::path::{Opt, Part};
use jaq_json::{Num, Val};

use crate::value;

/// A program compiled for direct evaluation.
#[derive(Debug)]
pub(crate) struct Fast {
    expr: Expr,
    /// The program only reads fields of its input (`.`, `.a.b`): its output
    /// is part of the record, already canonical.
    plain_path: bool,
}

#[derive(Debug)]
enum Expr {
    Id,
    Const(Val),
    /// `e.k1.k2...`: object fields (or `null` through `null`).
    Path(Box<Expr>, Vec<String>),
    Pipe(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Alt(Box<Expr>, Box<Expr>),
    Cmp(Box<Expr>, Cmp, Box<Expr>),
    Math(Box<Expr>, Math, Box<Expr>),
    Neg(Box<Expr>),
    /// `if c1 then t1 elif c2 then t2 ... else e end` (no `else`: `.`).
    If(Vec<(Expr, Expr)>, Option<Box<Expr>>),
    /// `{k: v, ...}`: keys evaluated to strings, later keys overwrite.
    Obj(Vec<(Expr, Expr)>),
    /// `[a, b, ...]`.
    Arr(Vec<Expr>),
    Call(Builtin),
    /// `e[from:to]` with constant bounds.
    Slice(Box<Expr>, Option<Val>, Option<Val>),
    /// `.k1.k2... |= f`: `f` applied to the field.
    Update(Vec<Val>, Box<Expr>),
    /// `.k1.k2... = e`: `e` evaluated on the input.
    Assign(Vec<Val>, Box<Expr>),
    /// `ltrimstr(s)` (`true`) or `rtrimstr(s)`.
    Trim(bool, Val),
    /// `sub(a; b)` or `gsub(a; b)` (`true`) with plain text `a` and `b`.
    Replace(String, String, bool),
    Map(Box<Expr>),
    Add,
    ToNumber,
}

#[derive(Debug, Clone, Copy)]
enum Builtin {
    Not,
    Type,
    Length,
    AsciiDowncase,
    AsciiUpcase,
    Floor,
    Round,
    Ceil,
}

impl Fast {
    /// Compiles `code` when the whole program is in the subset.
    pub(crate) fn compile(code: &str) -> Option<Fast> {
        let term = load::parse(code, |p| p.term())?;
        let expr = compile(&term)?;
        let plain_path = match &expr {
            Expr::Id => true,
            Expr::Path(base, _) => matches!(**base, Expr::Id),
            _ => false,
        };
        Some(Fast { expr, plain_path })
    }

    /// The program's one output for `input`, or `None` when jaq must run
    /// it (see the module docs).
    pub(crate) fn eval(&self, input: &Val) -> Option<Val> {
        let v = eval(&self.expr, input)?;
        if self.plain_path {
            Some(v)
        } else {
            // A depth over the limit declines too: jaq reports it.
            value::canonical(v).ok()
        }
    }

    /// Whether the program's one output is truthy, or `None` when jaq must
    /// run it: [`eval`](Self::eval) without making the output canonical,
    /// which does not change its truth.
    pub(crate) fn eval_truthy(&self, input: &Val) -> Option<bool> {
        eval(&self.expr, input).map(|v| value::truthy(&v))
    }

    /// Whether the output is the input or one of its fields.
    #[cfg(test)]
    pub(crate) fn is_plain_path(&self) -> bool {
        self.plain_path
    }
}

fn boxed(t: &Term<&str>) -> Option<Box<Expr>> {
    compile(t).map(Box::new)
}

fn compile(t: &Term<&str>) -> Option<Expr> {
    Some(match t {
        Term::Id => Expr::Id,
        Term::Num(n) => Expr::Const(number(n)?),
        Term::Str(None, parts) => Expr::Const(value::string(literal(parts)?)),
        Term::Arr(None) => Expr::Arr(Vec::new()),
        Term::Arr(Some(items)) => {
            let mut out = Vec::new();
            comma_items(items, &mut out)?;
            Expr::Arr(out)
        }
        Term::Obj(entries) => {
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                let key = match k {
                    Term::Str(None, parts) => Expr::Const(value::string(literal(parts)?)),
                    // `{(expr): v}`
                    other => compile(other)?,
                };
                let v = match v {
                    Some(v) => compile(v)?,
                    // `{a}` is `{a: .a}`; `{"a b"}` likewise.
                    None => match &key {
                        Expr::Const(Val::TStr(s)) => {
                            Expr::Path(Box::new(Expr::Id), vec![utf8(s)?.to_owned()])
                        }
                        _ => return None,
                    },
                };
                out.push((key, v));
            }
            Expr::Obj(out)
        }
        Term::Neg(x) => Expr::Neg(boxed(x)?),
        Term::BinOp(l, op @ (BinaryOp::Update | BinaryOp::Assign), r) => {
            let keys = field_path(l)?;
            let r = boxed(r)?;
            match op {
                BinaryOp::Update => Expr::Update(keys, r),
                _ => Expr::Assign(keys, r),
            }
        }
        Term::BinOp(l, op, r) => {
            let (l, r) = (boxed(l)?, boxed(r)?);
            match op {
                BinaryOp::Pipe(None) => Expr::Pipe(l, r),
                BinaryOp::Alt => Expr::Alt(l, r),
                BinaryOp::Or => Expr::Or(l, r),
                BinaryOp::And => Expr::And(l, r),
                BinaryOp::Math(m) => Expr::Math(l, *m, r),
                BinaryOp::Cmp(c) => Expr::Cmp(l, *c, r),
                _ => return None,
            }
        }
        Term::IfThenElse(branches, otherwise) => {
            let mut out = Vec::with_capacity(branches.len());
            for (c, then) in branches {
                out.push((compile(c)?, compile(then)?));
            }
            let otherwise = match otherwise {
                Some(e) => Some(boxed(e)?),
                None => None,
            };
            Expr::If(out, otherwise)
        }
        Term::Call("map", args) if args.len() == 1 => Expr::Map(boxed(&args[0])?),
        Term::Call(f @ ("ltrimstr" | "rtrimstr"), args) if args.len() == 1 => {
            let Expr::Const(s @ Val::TStr(_)) = compile(&args[0])? else {
                return None;
            };
            Expr::Trim(*f == "ltrimstr", s)
        }
        Term::Call(f @ ("sub" | "gsub"), args) if args.len() == 2 => {
            let text = |t: &Term<&str>| match t {
                Term::Str(None, parts) => literal(parts),
                _ => None,
            };
            let (pattern, with) = (text(&args[0])?, text(&args[1])?);
            // Only text that means itself as a regex.
            let special = |c: char| "\\.+*?()|[]{}^$#".contains(c) || c.is_whitespace();
            if pattern.is_empty() || pattern.chars().any(special) {
                return None;
            }
            Expr::Replace(pattern, with, *f == "gsub")
        }
        Term::Call(name, args) if args.is_empty() => match *name {
            "null" => Expr::Const(Val::Null),
            "true" => Expr::Const(Val::Bool(true)),
            "false" => Expr::Const(Val::Bool(false)),
            "not" => Expr::Call(Builtin::Not),
            "type" => Expr::Call(Builtin::Type),
            "length" => Expr::Call(Builtin::Length),
            "ascii_downcase" => Expr::Call(Builtin::AsciiDowncase),
            "ascii_upcase" => Expr::Call(Builtin::AsciiUpcase),
            "floor" => Expr::Call(Builtin::Floor),
            "round" => Expr::Call(Builtin::Round),
            "ceil" => Expr::Call(Builtin::Ceil),
            "add" => Expr::Add,
            "tonumber" => Expr::ToNumber,
            _ => return None,
        },
        Term::Path(base, path) => {
            // A constant slice may end the path: `.id[0:2]`.
            if let Some(((Part::Range(from, to), Opt::Essential), init)) = path.0.split_last() {
                let bound = |b: &Option<Term<&str>>| match b {
                    None => Some(None),
                    Some(t) => match compile(t)? {
                        Expr::Const(v @ Val::Num(Num::Int(_))) => Some(Some(v)),
                        _ => None,
                    },
                };
                // `.[]` (iteration) is a range without bounds.
                if from.is_none() && to.is_none() {
                    return None;
                }
                let (from, to) = (bound(from)?, bound(to)?);
                let init = jaq_core::path::Path(init.to_vec());
                let base = compile(&Term::Path(base.clone(), init))?;
                return Some(Expr::Slice(Box::new(base), from, to));
            }
            let mut keys = Vec::with_capacity(path.0.len());
            for (part, opt) in &path.0 {
                // `.a?` differs from `.a` only where it declines anyway.
                let (Part::Index(Term::Str(None, parts)), Opt::Essential | Opt::Optional) =
                    (part, opt)
                else {
                    return None;
                };
                keys.push(literal(parts)?);
            }
            let base = boxed(base)?;
            match *base {
                // `.a | .b` style nesting flattens: `(.a).b`.
                Expr::Path(inner, mut first) => {
                    first.extend(keys);
                    Expr::Path(inner, first)
                }
                other => Expr::Path(Box::new(other), keys),
            }
        }
        _ => return None,
    })
}

/// The keys of `.k1.k2...` (also `.`), for the left side of `|=` and `=`.
fn field_path(t: &Term<&str>) -> Option<Vec<Val>> {
    match compile(t)? {
        Expr::Id => Some(Vec::new()),
        Expr::Path(base, keys) if matches!(*base, Expr::Id) => {
            Some(keys.into_iter().map(value::string).collect())
        }
        _ => None,
    }
}

/// The items of `a, b, c` (inside `[...]`).
fn comma_items(t: &Term<&str>, out: &mut Vec<Expr>) -> Option<()> {
    match t {
        Term::BinOp(l, BinaryOp::Comma, r) => {
            comma_items(l, out)?;
            comma_items(r, out)
        }
        other => {
            out.push(compile(other)?);
            Some(())
        }
    }
}

/// A number literal as jaq makes it, except that a decimal literal is
/// its `f64` at once (jaq converts it so at every use: arithmetic,
/// comparison, hashing; its text would only show through `tostring`,
/// which is not in the subset).
fn number(n: &str) -> Option<Val> {
    if let Ok(i) = n.parse::<isize>() {
        return Some(Val::Num(Num::Int(i)));
    }
    match <Val as jaq_core::ValT>::from_num(n).ok()? {
        Val::Num(Num::Dec(d)) => Some(Val::Num(Num::from_dec_str(&d))),
        other => Some(other),
    }
}

/// The text of a string literal without interpolation or format.
fn literal(parts: &[StrPart<&str, Term<&str>>]) -> Option<String> {
    let mut s = String::new();
    for p in parts {
        match p {
            StrPart::Str(t) => s.push_str(t),
            StrPart::Char(c) => s.push(*c),
            StrPart::Term(_) => return None,
        }
    }
    Some(s)
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn eval(e: &Expr, input: &Val) -> Option<Val> {
    Some(match e {
        Expr::Id => input.clone(),
        Expr::Const(v) => v.clone(),
        Expr::Path(base, keys) => {
            let base = match **base {
                Expr::Id => return path(input, keys).cloned(),
                ref other => eval(other, input)?,
            };
            path(&base, keys)?.clone()
        }
        Expr::Pipe(l, r) => eval(r, &eval(l, input)?)?,
        Expr::And(l, r) => {
            if !value::truthy(&eval(l, input)?) {
                Val::Bool(false)
            } else {
                Val::Bool(value::truthy(&eval(r, input)?))
            }
        }
        Expr::Or(l, r) => {
            if value::truthy(&eval(l, input)?) {
                Val::Bool(true)
            } else {
                Val::Bool(value::truthy(&eval(r, input)?))
            }
        }
        Expr::Alt(l, r) => {
            let l = eval(l, input)?;
            if value::truthy(&l) {
                l
            } else {
                eval(r, input)?
            }
        }
        Expr::Cmp(l, op, r) => {
            let (l, r) = (eval(l, input)?, eval(r, input)?);
            Val::Bool(op.run(&l, &r))
        }
        Expr::Math(l, op, r) => {
            let (l, r) = (eval(l, input)?, eval(r, input)?);
            if matches!(
                (&l, &r),
                (Val::Num(Num::Dec(_)), _) | (_, Val::Num(Num::Dec(_)))
            ) {
                return None;
            }
            // `"s" * n` repeats the string n times: work the record picks,
            // which only jaq's path measures against the stage's limits.
            let text = |v: &Val| matches!(v, Val::TStr(_) | Val::BStr(_));
            if matches!(op, Math::Mul) && (text(&l) || text(&r)) {
                return None;
            }
            op.run(l, r).ok()?
        }
        Expr::Neg(x) => (-eval(x, input)?).ok()?,
        Expr::If(branches, otherwise) => {
            for (c, then) in branches {
                if value::truthy(&eval(c, input)?) {
                    return eval(then, input);
                }
            }
            match otherwise {
                Some(e) => eval(e, input)?,
                None => input.clone(),
            }
        }
        Expr::Obj(entries) => {
            let mut m = value::Map::with_capacity_and_hasher(entries.len(), Default::default());
            for (k, v) in entries {
                let k = eval(k, input)?;
                if !matches!(k, Val::TStr(_)) {
                    return None;
                }
                let v = eval(v, input)?;
                m.insert(k, v);
            }
            Val::obj(m)
        }
        Expr::Arr(items) => {
            let mut out = Vec::with_capacity(items.len());
            for x in items {
                out.push(eval(x, input)?);
            }
            Val::Arr(out.into())
        }
        Expr::Call(b) => builtin(*b, input)?,
        Expr::Slice(base, from, to) => {
            let v = eval(base, input)?;
            if !matches!(v, Val::TStr(_) | Val::Arr(_)) {
                return None;
            }
            <Val as jaq_core::ValT>::range(v, from.as_ref()..to.as_ref()).ok()?
        }
        Expr::Update(keys, f) => update(input.clone(), keys, &|old| eval(f, &old))?,
        Expr::Assign(keys, e) => {
            let new = eval(e, input)?;
            update(input.clone(), keys, &|_| Some(new.clone()))?
        }
        Expr::Trim(left, fix) => match (input, fix) {
            (Val::TStr(s), Val::TStr(x)) => {
                let cut = if *left {
                    s.strip_prefix(&***x)
                } else {
                    s.strip_suffix(&***x)
                };
                match cut {
                    Some(rest) => Val::utf8_str(rest.to_vec()),
                    None => input.clone(),
                }
            }
            _ => return None,
        },
        Expr::Replace(pattern, with, all) => {
            let Val::TStr(s) = input else { return None };
            let s = utf8(s)?;
            Val::utf8_str(if *all {
                s.replace(pattern.as_str(), with)
            } else {
                s.replacen(pattern.as_str(), with, 1)
            })
        }
        Expr::Map(f) => {
            let items: Vec<Val> = match input {
                Val::Arr(a) => a.iter().map(|x| eval(f, x)).collect::<Option<_>>()?,
                Val::Obj(o) => o.values().map(|x| eval(f, x)).collect::<Option<_>>()?,
                _ => return None,
            };
            Val::Arr(items.into())
        }
        Expr::Add => {
            // Numbers only: adding n strings or arrays copies the growing
            // sum n times (quadratic in the record), which only jaq's path
            // measures against the stage's limits.
            let mut acc = Val::Null;
            let mut add = |x: &Val| -> Option<()> {
                if !matches!(x, Val::Num(_) | Val::Null) {
                    return None;
                }
                acc = (std::mem::take(&mut acc) + x.clone()).ok()?;
                Some(())
            };
            match input {
                Val::Arr(a) => a.iter().try_for_each(&mut add)?,
                Val::Obj(o) => o.values().try_for_each(&mut add)?,
                _ => return None,
            }
            acc
        }
        Expr::ToNumber => match input {
            Val::Num(Num::Dec(_)) => return None,
            Val::Num(_) => input.clone(),
            Val::TStr(s) => {
                // jaq parses the text as JSON (`fromjson`); only a lone
                // number is a number. No brackets: nothing to nest.
                if s.iter().any(|b| matches!(b, b'[' | b'{')) {
                    return None;
                }
                let mut all = jaq_json::read::parse_many(s);
                match (all.next(), all.next()) {
                    (Some(Ok(Val::Num(Num::Dec(d)))), None) => Val::Num(Num::from_dec_str(&d)),
                    (Some(Ok(n @ Val::Num(_))), None) => n,
                    _ => return None,
                }
            }
            _ => return None,
        },
    })
}

/// `v` with the field at `keys` replaced by `f` of it, as jaq updates a
/// path of object keys (through jaq's own `map_index`: a missing key is
/// added at the end); `None` where jaq fails or `f` declines.
fn update(v: Val, keys: &[Val], f: &dyn Fn(Val) -> Option<Val>) -> Option<Val> {
    let Some((key, rest)) = keys.split_first() else {
        return f(v);
    };
    let declined = std::cell::Cell::new(false);
    let out = <Val as jaq_core::ValT>::map_index(v, key, Opt::Essential, |old| {
        let new = update(old, rest, f);
        if new.is_none() {
            declined.set(true);
        }
        std::iter::once(Ok(new.unwrap_or(Val::Null)))
    });
    if declined.get() {
        return None;
    }
    out.ok()
}

/// `v.k1.k2...` on objects and `null`; `None` (jaq's error) on anything
/// else.
fn path<'v>(v: &'v Val, keys: &[String]) -> Option<&'v Val> {
    static NULL: Val = Val::Null;
    let mut cur = v;
    for k in keys {
        cur = match cur {
            Val::Obj(_) => value::get(cur, k).unwrap_or(&NULL),
            Val::Null => &NULL,
            _ => return None,
        };
    }
    Some(cur)
}

fn builtin(b: Builtin, v: &Val) -> Option<Val> {
    Some(match b {
        Builtin::Not => Val::Bool(!value::truthy(v)),
        Builtin::Type => value::string(match v {
            Val::Null => "null",
            Val::Bool(_) => "boolean",
            Val::Num(_) => "number",
            Val::TStr(_) => "string",
            Val::Arr(_) => "array",
            Val::Obj(_) => "object",
            Val::BStr(_) => return None,
        }),
        Builtin::Length => match v {
            Val::Null => Val::from(0usize),
            Val::Num(Num::Int(i)) => Val::Num(Num::Int(i.checked_abs()?)),
            Val::Num(Num::Float(f)) => Val::Num(Num::Float(f.abs())),
            Val::TStr(s) => Val::from(utf8(s)?.chars().count()),
            Val::Arr(a) => Val::from(a.len()),
            Val::Obj(o) => Val::from(o.len()),
            _ => return None,
        },
        Builtin::AsciiDowncase => match v {
            Val::TStr(s) => Val::utf8_str(s.to_ascii_lowercase()),
            _ => return None,
        },
        Builtin::AsciiUpcase => match v {
            Val::TStr(s) => Val::utf8_str(s.to_ascii_uppercase()),
            _ => return None,
        },
        Builtin::Floor => round(v, f64::floor)?,
        Builtin::Round => round(v, f64::round)?,
        Builtin::Ceil => round(v, f64::ceil)?,
    })
}

/// jaq's `floor`/`round`/`ceil`: integers as they are, a float rounded to
/// an integer when it fits one, else (infinite, NaN) the float.
fn round(v: &Val, f: fn(f64) -> f64) -> Option<Val> {
    match v {
        Val::Num(Num::Int(_) | Num::BigInt(_)) => Some(v.clone()),
        Val::Num(Num::Float(x)) => {
            let y = f(*x);
            if !y.is_finite() {
                Some(Val::Num(Num::Float(y)))
            } else if isize::MIN as f64 <= y && y <= isize::MAX as f64 {
                Some(Val::Num(Num::Int(y as isize)))
            } else {
                None
            }
        }
        _ => None,
    }
}
