//! A parser for `def f(<fields>): pass` — the Python DSPy hands to `ast.parse`
//! — and for single expressions (`ast.parse(src, mode="eval")`, which
//! `ast.literal_eval` starts with).
//!
//! It builds the parameter list and each annotation's expression tree
//! (`super::ast`), with CPython 3.11's syntax-error messages for the
//! mistakes people make in signature strings.

use super::ast::{BinOp, CmpOp, Const, Expr, UnaryOp};
use super::lexer::{tokenize, Number, StrLit, Tok, Token};

/// A parameter of the wrapped `def`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Param {
    pub name: String,
    pub annotation: Option<Expr>,
}

/// The parameters DSPy reads (`args.args`: positional-or-keyword ones only).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Params {
    pub args: Vec<Param>,
}

/// A syntax error: CPython's message and line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub message: String,
    pub line: u32,
    /// Valid Python the native parser does not model (the caller answers `Unsupported`).
    pub unsupported: bool,
}

impl SyntaxError {
    /// `str(SyntaxError)` as `ast.parse` raises it.
    pub(crate) fn to_python(&self) -> String {
        format!("{} (<unknown>, line {})", self.message, self.line)
    }
}

/// Python keywords (soft keywords excluded: they are valid names).
const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
    "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
    "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
];

fn is_keyword(name: &str) -> bool {
    KEYWORDS.contains(&name)
}

/// Outcome of an expression rule: no match (try something else), or a hard error.
enum Fail {
    NoMatch,
    Error(SyntaxError),
}

type PResult<T> = Result<T, Fail>;

/// Positional and keyword arguments of a call.
type CallArgs = (Vec<Expr>, Vec<(Option<String>, Expr)>);

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    /// Nested unary operators and conditional expressions (brackets are
    /// bounded by the tokenizer).
    depth: usize,
}

/// How deep unary operators and `if` expressions may nest.
const MAX_DEPTH: usize = 1000;

/// Parse `field_string` as DSPy does: `ast.parse(f"def f({field_string}): pass")`.
pub(crate) fn parse_params(field_string: &str) -> Result<Params, SyntaxError> {
    let src = format!("def f({field_string}): pass");
    let mut p = Parser { toks: tokenize(&src), pos: 0, depth: 0 };
    p.def()
}

/// Parse `src` as Python's `ast.parse(src, mode="eval")` does: one expression,
/// or several separated by commas (a tuple).
pub(crate) fn parse_expression(src: &str) -> Result<Expr, SyntaxError> {
    let mut p = Parser { toks: tokenize(src), pos: 0, depth: 0 };
    while p.eat_op(";") {}
    let first = p.star_or_expr().map_err(|f| match f {
        Fail::Error(e) => e,
        Fail::NoMatch => p.error_here(),
    })?;
    let expr = if p.is_op(",") {
        let mut items = vec![first];
        while p.eat_op(",") {
            if matches!(p.peek(), Tok::End | Tok::Op(";")) {
                break;
            }
            items.push(p.star_or_expr().map_err(|f| match f {
                Fail::Error(e) => e,
                Fail::NoMatch => p.error_here(),
            })?);
        }
        Expr::Tuple(items)
    } else {
        first
    };
    while p.eat_op(";") {}
    match p.peek() {
        Tok::End => Ok(expr),
        _ => Err(p.error_here()),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].tok
    }

    fn peek_at(&self, k: usize) -> &Tok {
        &self.toks[(self.pos + k).min(self.toks.len() - 1)].tok
    }

    fn line(&self) -> u32 {
        self.toks[self.pos.min(self.toks.len() - 1)].line
    }

    fn bump(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Tok::Op(o) if *o == op)
    }

    fn is_name(&self, name: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == name)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// The error for the current token: a pending tokenizer error, or "invalid syntax".
    fn error_here(&self) -> SyntaxError {
        match self.peek() {
            Tok::Error(msg) => SyntaxError {
                message: msg.clone(),
                line: self.line(),
                unsupported: msg.starts_with("(unicode error) named"),
            },
            // Comprehensions are valid Python the native parser does not model.
            Tok::Name(n) if n == "for" => SyntaxError {
                message: "comprehensions are not supported by the native signature parser".into(),
                line: self.line(),
                unsupported: true,
            },
            _ => SyntaxError { message: "invalid syntax".into(), line: self.line(), unsupported: false },
        }
    }

    fn error_msg(&self, msg: &str) -> SyntaxError {
        SyntaxError { message: msg.to_string(), line: self.line(), unsupported: false }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), SyntaxError> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(self.error_here())
        }
    }

    fn def(&mut self) -> Result<Params, SyntaxError> {
        // `def f(` comes from the wrapper and always tokenizes.
        self.bump();
        self.bump();
        self.expect_op("(")?;
        let params = self.params()?;
        self.expect_op(")")?;
        self.expect_op(":")?;
        if !self.is_name("pass") {
            return Err(self.error_here());
        }
        self.bump();
        match self.peek() {
            Tok::End => Ok(params),
            _ => Err(self.error_here()),
        }
    }

    fn param_name(&mut self) -> Result<String, SyntaxError> {
        match self.peek().clone() {
            Tok::Name(n) if !is_keyword(&n) => {
                self.bump();
                Ok(n)
            }
            _ => Err(self.error_here()),
        }
    }

    fn params(&mut self) -> Result<Params, SyntaxError> {
        let mut out = Params::default();
        // Positional parameters seen before `/` move to posonly (dropped).
        let mut slash_seen = false;
        let mut star_seen = false; // `*` or `*args`
        let mut kwarg_seen = false;
        let mut default_seen = false;
        let mut any_param = false;
        let mut bare_star_pending = false;
        loop {
            if self.is_op(")") {
                break;
            }
            if kwarg_seen {
                return Err(self.error_msg("arguments cannot follow var-keyword argument"));
            }
            if self.eat_op("/") {
                if slash_seen {
                    return Err(self.error_msg("/ may appear only once"));
                }
                if star_seen {
                    return Err(self.error_msg("/ must be ahead of *"));
                }
                if !any_param {
                    return Err(self.error_msg("at least one argument must precede /"));
                }
                slash_seen = true;
                out.args.clear();
            } else if self.eat_op("**") {
                let _ = self.param_name()?;
                if self.eat_op(":") {
                    self.expression_checked()?;
                }
                if self.is_op("=") {
                    return Err(self.error_msg("var-keyword argument cannot have default value"));
                }
                kwarg_seen = true;
                bare_star_pending = false;
            } else if self.eat_op("*") {
                if star_seen {
                    if self.is_op(",") || matches!(self.peek(), Tok::Name(_)) {
                        return Err(self.error_msg("* argument may appear only once"));
                    }
                    return Err(self.error_here());
                }
                star_seen = true;
                if self.is_op(",") || self.is_op(")") {
                    bare_star_pending = true;
                } else {
                    let _ = self.param_name()?;
                    if self.eat_op(":") {
                        self.expression_checked()?;
                    }
                    if self.is_op("=") {
                        return Err(self.error_msg("var-positional argument cannot have default value"));
                    }
                }
            } else {
                let name = self.param_name()?;
                let annotation = if self.eat_op(":") { Some(self.expression_checked()?) } else { None };
                let has_default = if self.eat_op("=") {
                    if self.is_op(",") || self.is_op(")") {
                        return Err(self.error_msg("expected default value expression"));
                    }
                    self.expression_checked()?;
                    true
                } else {
                    false
                };
                if !star_seen {
                    if default_seen && !has_default {
                        return Err(self.error_msg("non-default argument follows default argument"));
                    }
                    default_seen |= has_default;
                    out.args.push(Param { name, annotation });
                }
                any_param = true;
                bare_star_pending = false;
            }
            if !self.eat_op(",") {
                break;
            }
        }
        if bare_star_pending {
            return Err(self.error_msg("named arguments must follow bare *"));
        }
        Ok(out)
    }

    /// An expression followed by something that cannot continue it: CPython's
    /// "Perhaps you forgot a comma?" when another expression starts right away.
    fn expression_checked(&mut self) -> Result<Expr, SyntaxError> {
        let start_line = self.line();
        let e = match self.expression() {
            Ok(e) => e,
            Err(Fail::Error(e)) => return Err(e),
            Err(Fail::NoMatch) => return Err(self.error_here()),
        };
        let starts_expr = match self.peek() {
            Tok::Name(n) => {
                !is_keyword(n) || matches!(n.as_str(), "True" | "False" | "None" | "not" | "lambda" | "await")
            }
            Tok::Number(_) | Tok::Str(_) => true,
            Tok::Op(o) => matches!(*o, "{" | "~" | "..." | "["),
            _ => false,
        };
        if starts_expr {
            let name_then_string = matches!(e, Expr::Name(_)) && matches!(self.peek(), Tok::Str(_));
            let soft = matches!(&e, Expr::Name(n) if matches!(n.as_str(), "match" | "case" | "type" | "_"));
            if !name_then_string && !soft {
                return Err(SyntaxError {
                    message: "invalid syntax. Perhaps you forgot a comma?".into(),
                    line: start_line,
                    unsupported: false,
                });
            }
        }
        Ok(e)
    }

    /// One level deeper (an operand of a unary operator or an `if`
    /// expression, a bracketed expression), on a stack with room for it.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Parser) -> PResult<T>) -> PResult<T> {
        if self.depth >= MAX_DEPTH {
            return Err(Fail::Error(self.error_msg("too many nested expressions")));
        }
        self.depth += 1;
        let r = crate::pyemu::with_stack(|| f(self));
        self.depth -= 1;
        r
    }

    fn expression(&mut self) -> PResult<Expr> {
        self.nested(Parser::expression_here)
    }

    fn expression_here(&mut self) -> PResult<Expr> {
        if self.is_name("lambda") {
            // Lambdas are valid Python but never a type; the resolver reports them.
            let mut e = self.error_msg("lambda expressions are not supported by the native signature parser");
            e.unsupported = true;
            return Err(Fail::Error(e));
        }
        let body = self.disjunction()?;
        if self.is_name("if") {
            self.bump();
            let test = self.disjunction().map_err(|f| self.hard(f))?;
            if !self.is_name("else") {
                return Err(Fail::Error(self.error_msg("expected 'else' after 'if' expression")));
            }
            self.bump();
            let orelse = self.expression().map_err(|f| self.hard(f))?;
            return Ok(Expr::IfExp(Box::new(test), Box::new(body), Box::new(orelse)));
        }
        Ok(body)
    }

    fn hard(&self, f: Fail) -> Fail {
        match f {
            Fail::NoMatch => Fail::Error(self.error_here()),
            e => e,
        }
    }

    fn disjunction(&mut self) -> PResult<Expr> {
        let first = self.conjunction()?;
        if !self.is_name("or") {
            return Ok(first);
        }
        let mut values = vec![first];
        while self.is_name("or") {
            self.bump();
            values.push(self.conjunction().map_err(|f| self.hard(f))?);
        }
        Ok(Expr::BoolOp(false, values))
    }

    fn conjunction(&mut self) -> PResult<Expr> {
        let first = self.inversion()?;
        if !self.is_name("and") {
            return Ok(first);
        }
        let mut values = vec![first];
        while self.is_name("and") {
            self.bump();
            values.push(self.inversion().map_err(|f| self.hard(f))?);
        }
        Ok(Expr::BoolOp(true, values))
    }

    fn inversion(&mut self) -> PResult<Expr> {
        if self.is_name("not") {
            self.bump();
            let e = self.nested(Parser::inversion).map_err(|f| self.hard(f))?;
            return Ok(Expr::UnaryOp(UnaryOp::Not, Box::new(e)));
        }
        self.comparison()
    }

    fn cmp_op(&mut self) -> Option<CmpOp> {
        let op = match self.peek() {
            Tok::Op("==") => CmpOp::Eq,
            Tok::Op("!=") => CmpOp::NotEq,
            Tok::Op("<") => CmpOp::Lt,
            Tok::Op("<=") => CmpOp::LtE,
            Tok::Op(">") => CmpOp::Gt,
            Tok::Op(">=") => CmpOp::GtE,
            Tok::Name(n) if n == "in" => CmpOp::In,
            Tok::Name(n) if n == "is" => {
                if matches!(self.peek_at(1), Tok::Name(m) if m == "not") {
                    self.bump();
                    CmpOp::IsNot
                } else {
                    CmpOp::Is
                }
            }
            Tok::Name(n) if n == "not" && matches!(self.peek_at(1), Tok::Name(m) if m == "in") => {
                self.bump();
                CmpOp::NotIn
            }
            _ => return None,
        };
        self.bump();
        Some(op)
    }

    fn comparison(&mut self) -> PResult<Expr> {
        let left = self.bitor()?;
        let mut rest = Vec::new();
        while let Some(op) = self.cmp_op() {
            rest.push((op, self.bitor().map_err(|f| self.hard(f))?));
        }
        if rest.is_empty() {
            Ok(left)
        } else {
            Ok(Expr::Compare(Box::new(left), rest))
        }
    }

    /// The binary operator at the cursor and its precedence (higher binds tighter).
    fn binary_op(&self) -> Option<(BinOp, u8)> {
        let Tok::Op(op) = self.peek() else {
            return None;
        };
        Some(match *op {
            "|" => (BinOp::BitOr, 0),
            "^" => (BinOp::BitXor, 1),
            "&" => (BinOp::BitAnd, 2),
            "<<" => (BinOp::LShift, 3),
            ">>" => (BinOp::RShift, 3),
            "+" => (BinOp::Add, 4),
            "-" => (BinOp::Sub, 4),
            "*" => (BinOp::Mult, 5),
            "/" => (BinOp::Div, 5),
            "//" => (BinOp::FloorDiv, 5),
            "%" => (BinOp::Mod, 5),
            "@" => (BinOp::MatMult, 5),
            _ => return None,
        })
    }

    /// Binary operators by precedence climbing (all left-associative).
    fn binary_level(&mut self, min: u8) -> PResult<Expr> {
        let mut left = self.factor()?;
        while let Some((op, prec)) = self.binary_op() {
            if prec < min {
                break;
            }
            self.bump();
            let right = self.binary_level(prec + 1).map_err(|f| self.hard(f))?;
            left = Expr::BinOp(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn bitor(&mut self) -> PResult<Expr> {
        self.binary_level(0)
    }

    fn factor(&mut self) -> PResult<Expr> {
        let op = match self.peek() {
            Tok::Op("-") => Some(UnaryOp::USub),
            Tok::Op("+") => Some(UnaryOp::UAdd),
            Tok::Op("~") => Some(UnaryOp::Invert),
            _ => None,
        };
        if let Some(op) = op {
            self.bump();
            let e = self.nested(Parser::factor).map_err(|f| self.hard(f))?;
            return Ok(Expr::UnaryOp(op, Box::new(e)));
        }
        self.power()
    }

    fn power(&mut self) -> PResult<Expr> {
        let base = self.primary()?;
        if self.eat_op("**") {
            let exp = self.factor().map_err(|f| self.hard(f))?;
            return Ok(Expr::BinOp(Box::new(base), BinOp::Pow, Box::new(exp)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> PResult<Expr> {
        let mut e = self.atom()?;
        loop {
            if self.eat_op(".") {
                match self.peek().clone() {
                    Tok::Name(n) if !is_keyword(&n) => {
                        self.bump();
                        e = Expr::Attribute(Box::new(e), n);
                    }
                    _ => return Err(Fail::Error(self.error_here())),
                }
            } else if self.is_op("[") {
                if matches!(self.peek_at(1), Tok::Op("]")) {
                    // `x[]`: CPython reads `x` and an empty list side by side.
                    return Ok(e);
                }
                self.bump();
                let slice = self.slices()?;
                if !self.eat_op("]") {
                    return Err(Fail::Error(self.error_here()));
                }
                e = Expr::Subscript(Box::new(e), Box::new(slice));
            } else if self.eat_op("(") {
                let (args, keywords) = self.call_args()?;
                if !self.eat_op(")") {
                    return Err(Fail::Error(self.error_here()));
                }
                e = Expr::Call { func: Box::new(e), args, keywords };
            } else {
                return Ok(e);
            }
        }
    }

    fn slice(&mut self) -> PResult<Expr> {
        let lower = if self.is_op(":") { None } else { Some(self.star_or_expr()?) };
        if !self.eat_op(":") {
            return lower.ok_or(Fail::NoMatch);
        }
        let upper = if self.is_op(":") || self.is_op("]") || self.is_op(",") {
            None
        } else {
            Some(Box::new(self.expression().map_err(|f| self.hard(f))?))
        };
        let step = if self.eat_op(":") && !(self.is_op("]") || self.is_op(",")) {
            Some(Box::new(self.expression().map_err(|f| self.hard(f))?))
        } else {
            None
        };
        Ok(Expr::Slice(lower.map(Box::new), upper, step))
    }

    fn star_or_expr(&mut self) -> PResult<Expr> {
        if self.eat_op("*") {
            let e = self.bitor().map_err(|f| self.hard(f))?;
            return Ok(Expr::Starred(Box::new(e)));
        }
        self.expression()
    }

    fn slices(&mut self) -> PResult<Expr> {
        let first = self.slice().map_err(|f| self.hard(f))?;
        if !self.is_op(",") {
            if matches!(first, Expr::Starred(_)) {
                return Ok(Expr::Tuple(vec![first]));
            }
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_op(",") {
            if self.is_op("]") {
                break;
            }
            items.push(self.slice().map_err(|f| self.hard(f))?);
        }
        Ok(Expr::Tuple(items))
    }

    fn call_args(&mut self) -> PResult<CallArgs> {
        let mut args = Vec::new();
        let mut keywords = Vec::new();
        while !self.is_op(")") {
            if self.eat_op("**") {
                keywords.push((None, self.expression().map_err(|f| self.hard(f))?));
            } else if let (Tok::Name(n), Tok::Op("=")) = (self.peek().clone(), self.peek_at(1).clone()) {
                self.bump();
                self.bump();
                keywords.push((Some(n), self.expression().map_err(|f| self.hard(f))?));
            } else {
                args.push(self.star_or_expr().map_err(|f| self.hard(f))?);
            }
            if !self.eat_op(",") {
                break;
            }
        }
        Ok((args, keywords))
    }

    fn atom(&mut self) -> PResult<Expr> {
        match self.peek().clone() {
            Tok::Name(n) => match n.as_str() {
                "True" => {
                    self.bump();
                    Ok(Expr::Constant(Const::Bool(true)))
                }
                "False" => {
                    self.bump();
                    Ok(Expr::Constant(Const::Bool(false)))
                }
                "None" => {
                    self.bump();
                    Ok(Expr::Constant(Const::None))
                }
                n if is_keyword(n) => Err(Fail::NoMatch),
                _ => {
                    self.bump();
                    Ok(Expr::Name(n))
                }
            },
            Tok::Number(n) => {
                self.bump();
                Ok(Expr::Constant(match n {
                    Number::Int(i) => Const::Int(i),
                    Number::BigInt(s) => Const::BigInt(s),
                    Number::Float(f) => Const::Float(f),
                    Number::Imaginary(f) => Const::Complex(f),
                }))
            }
            Tok::Str(first) => {
                self.bump();
                let mut parts = vec![first];
                while let Tok::Str(s) = self.peek().clone() {
                    self.bump();
                    parts.push(s);
                }
                concat_strings(parts)
                    .ok_or_else(|| Fail::Error(self.error_msg("cannot mix bytes and nonbytes literals")))
            }
            Tok::Op("...") => {
                self.bump();
                Ok(Expr::Constant(Const::Ellipsis))
            }
            Tok::Op("(") => {
                self.bump();
                if self.eat_op(")") {
                    return Ok(Expr::Tuple(Vec::new()));
                }
                let first = self.star_or_expr().map_err(|f| self.hard(f))?;
                if self.eat_op(")") {
                    return Ok(first);
                }
                if !self.is_op(",") {
                    return Err(Fail::Error(self.error_here()));
                }
                let mut items = vec![first];
                while self.eat_op(",") {
                    if self.is_op(")") {
                        break;
                    }
                    items.push(self.star_or_expr().map_err(|f| self.hard(f))?);
                }
                if !self.eat_op(")") {
                    return Err(Fail::Error(self.error_here()));
                }
                Ok(Expr::Tuple(items))
            }
            Tok::Op("[") => {
                self.bump();
                let mut items = Vec::new();
                while !self.is_op("]") {
                    items.push(self.star_or_expr().map_err(|f| self.hard(f))?);
                    if !self.eat_op(",") {
                        break;
                    }
                }
                if !self.eat_op("]") {
                    return Err(Fail::Error(self.error_here()));
                }
                Ok(Expr::List(items))
            }
            Tok::Op("{") => {
                self.bump();
                if self.eat_op("}") {
                    return Ok(Expr::Dict(Vec::new()));
                }
                let mut dict: Vec<(Option<Expr>, Expr)> = Vec::new();
                let mut set: Vec<Expr> = Vec::new();
                let mut is_dict = None;
                while !self.is_op("}") {
                    if self.eat_op("**") {
                        is_dict.get_or_insert(true);
                        dict.push((None, self.bitor().map_err(|f| self.hard(f))?));
                    } else {
                        let k = self.star_or_expr().map_err(|f| self.hard(f))?;
                        if self.eat_op(":") {
                            if is_dict == Some(false) {
                                return Err(Fail::Error(self.error_here()));
                            }
                            is_dict = Some(true);
                            dict.push((Some(k), self.expression().map_err(|f| self.hard(f))?));
                        } else {
                            if is_dict == Some(true) {
                                return Err(Fail::Error(self.error_here()));
                            }
                            is_dict = Some(false);
                            set.push(k);
                        }
                    }
                    if !self.eat_op(",") {
                        break;
                    }
                }
                if !self.eat_op("}") {
                    return Err(Fail::Error(self.error_here()));
                }
                Ok(if is_dict == Some(false) { Expr::Set(set) } else { Expr::Dict(dict) })
            }
            Tok::Error(_) => Err(Fail::Error(self.error_here())),
            _ => Err(Fail::NoMatch),
        }
    }
}

fn concat_strings(parts: Vec<StrLit>) -> Option<Expr> {
    if parts.iter().any(|p| matches!(p, StrLit::FStr)) {
        return Some(Expr::JoinedStr);
    }
    let bytes = parts.iter().filter(|p| matches!(p, StrLit::Bytes(_))).count();
    if bytes != 0 && bytes != parts.len() {
        return None;
    }
    if bytes != 0 {
        let mut out = Vec::new();
        for p in parts {
            if let StrLit::Bytes(b) = p {
                out.extend(b);
            }
        }
        return Some(Expr::Constant(Const::Bytes(out)));
    }
    let mut value = String::new();
    let mut u_prefix = false;
    for (i, p) in parts.into_iter().enumerate() {
        if let StrLit::Str { value: v, u_prefix: u } = p {
            if i == 0 {
                u_prefix = u;
            }
            value.push_str(&v);
        }
    }
    Some(Expr::Constant(Const::Str { value, u_prefix }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        parse_params(s).unwrap_err().to_python()
    }

    fn dump(s: &str) -> String {
        parse_params(s).unwrap().args[0].annotation.as_ref().unwrap().dump()
    }

    #[test]
    fn parameters_like_ast() {
        let names = |s: &str| parse_params(s).unwrap().args.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names("a, b: int = 3, *, c"), vec!["a", "b"]);
        assert_eq!(names("a, /, b"), vec!["b"]);
        assert_eq!(names("*args, **kw"), Vec::<String>::new());
        assert_eq!(names("a, a"), vec!["a", "a"]);
        assert_eq!(names("a #c\n"), vec!["a"]);
        assert_eq!(names(""), Vec::<String>::new());
    }

    #[test]
    fn syntax_errors_like_cpython() {
        assert_eq!(err("a b"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a\nb"), "invalid syntax (<unknown>, line 2)");
        assert_eq!(err("a: int b"), "invalid syntax. Perhaps you forgot a comma? (<unknown>, line 1)");
        assert_eq!(err("a: int\n b"), "invalid syntax. Perhaps you forgot a comma? (<unknown>, line 1)");
        assert_eq!(err("a = 1 2"), "invalid syntax. Perhaps you forgot a comma? (<unknown>, line 1)");
        assert_eq!(err("a: int 'x'"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a = 1, b"), "non-default argument follows default argument (<unknown>, line 1)");
        assert_eq!(err("**k, a"), "arguments cannot follow var-keyword argument (<unknown>, line 1)");
        assert_eq!(err("/, a"), "at least one argument must precede / (<unknown>, line 1)");
        assert_eq!(err("a, /, /"), "/ may appear only once (<unknown>, line 1)");
        assert_eq!(err("a: int = "), "expected default value expression (<unknown>, line 1)");
        assert_eq!(err("a: (int"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(
            err("a: {int"),
            "closing parenthesis ')' does not match opening parenthesis '{' (<unknown>, line 1)"
        );
        assert_eq!(
            err("a: list["),
            "closing parenthesis ')' does not match opening parenthesis '[' (<unknown>, line 1)"
        );
        assert_eq!(err("a)"), "unmatched ')' (<unknown>, line 1)");
        assert_eq!(err("class"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("None"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err(", a"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a,,b"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a: "), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("*, *"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a: x."), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a: x.1"), "invalid syntax. Perhaps you forgot a comma? (<unknown>, line 1)");
        assert_eq!(err("a; b"), "invalid syntax (<unknown>, line 1)");
        assert_eq!(err("a\\\nb"), "invalid syntax (<unknown>, line 2)");
    }

    #[test]
    fn dumps_like_ast() {
        assert_eq!(dump("a: 1+2"), "BinOp(left=Constant(value=1), op=Add(), right=Constant(value=2))");
        assert_eq!(dump("a: [int]"), "List(elts=[Name(id='int', ctx=Load())], ctx=Load())");
        assert_eq!(dump("a: -1"), "UnaryOp(op=USub(), operand=Constant(value=1))");
        assert_eq!(dump("a: int()"), "Call(func=Name(id='int', ctx=Load()), args=[], keywords=[])");
        assert_eq!(
            dump("a: f(a, b=1, *c, **d)"),
            "Call(func=Name(id='f', ctx=Load()), args=[Name(id='a', ctx=Load()), Starred(value=Name(id='c', ctx=Load()), ctx=Load())], keywords=[keyword(arg='b', value=Constant(value=1)), keyword(value=Name(id='d', ctx=Load()))])"
        );
        assert_eq!(dump("a: x[1:2]"), "Subscript(value=Name(id='x', ctx=Load()), slice=Slice(lower=Constant(value=1), upper=Constant(value=2)), ctx=Load())");
        assert_eq!(
            dump("a: x if y else z"),
            "IfExp(test=Name(id='y', ctx=Load()), body=Name(id='x', ctx=Load()), orelse=Name(id='z', ctx=Load()))"
        );
        assert_eq!(dump("a: x and y"), "BoolOp(op=And(), values=[Name(id='x', ctx=Load()), Name(id='y', ctx=Load())])");
        assert_eq!(
            dump("a: x < y"),
            "Compare(left=Name(id='x', ctx=Load()), ops=[Lt()], comparators=[Name(id='y', ctx=Load())])"
        );
        assert_eq!(dump("a: {1: 2}"), "Dict(keys=[Constant(value=1)], values=[Constant(value=2)])");
        assert_eq!(dump("a: {1, 2}"), "Set(elts=[Constant(value=1), Constant(value=2)])");
        assert_eq!(dump("a: (1,)"), "Tuple(elts=[Constant(value=1)], ctx=Load())");
        assert_eq!(dump("a: 'a' 'b'"), "Constant(value='ab')");
        assert_eq!(dump("a: u'x'"), "Constant(value='x', kind='u')");
        assert_eq!(dump("a: b'x'"), "Constant(value=b'x')");
        assert_eq!(dump("a: 1j"), "Constant(value=1j)");
        assert_eq!(dump("a: x ** y"), "BinOp(left=Name(id='x', ctx=Load()), op=Pow(), right=Name(id='y', ctx=Load()))");
        assert_eq!(dump("a: x[*y]"), "Subscript(value=Name(id='x', ctx=Load()), slice=Tuple(elts=[Starred(value=Name(id='y', ctx=Load()), ctx=Load())], ctx=Load()), ctx=Load())");
    }
}
