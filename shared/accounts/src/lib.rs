//! The sample domain: bank accounts, as pure decide/evolve functions.
//!
//! Amounts are positive integers in minor units (cents); balances never go below zero and
//! additions are overflow-checked. `Deposited` carries one real schema evolution: version 1
//! had no currency (every account then was in EUR), version 2 has one.

mod projection;

pub use projection::AccountsByOwner;

use chronicle_kernel::{Aggregate, DomainError, DomainEvent, EventSchema, Refusal, SubjectOf};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The currency of accounts that predate multi-currency support (events `Deposited` v1).
pub const LEGACY_CURRENCY: &str = "EUR";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    #[default]
    Unopened,
    Open,
    Closed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub status: Status,
    pub owner: String,
    pub currency: String,
    pub balance: u64,
    /// Personal data of the owner: as stored, a token (see `chronicle_kernel::personal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A command to an account, tagged by `type`. Amounts are positive integers in minor units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AccountCommand {
    /// Opens the account (in EUR unless `currency` says otherwise). `holder_name` and `email`
    /// are personal data of the data subject `owner` names (then an id: 1 to 128 characters from
    /// A-Z, a-z, 0-9, '.', '_', ':' and '-'): stored encrypted with the subject's key, erased when
    /// it is forgotten.
    Open {
        #[schemars(length(min = 1, max = 128))]
        owner: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(regex(pattern = "^[A-Z]{3}$"))]
        currency: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 1, max = 200))]
        holder_name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(length(min = 3, max = 254))]
        email: Option<String>,
    },
    /// Adds to the balance; `currency`, when given, must be the account's.
    Deposit {
        #[schemars(range(min = 1))]
        amount: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(regex(pattern = "^[A-Z]{3}$"))]
        currency: Option<String>,
    },
    /// Takes from the balance, which never goes below zero.
    Withdraw {
        #[schemars(range(min = 1))]
        amount: u64,
    },
    /// Closes the account: no command but this one's repeats is accepted after it.
    // `{}` rather than a unit variant: serde refuses unknown fields only on struct variants.
    Close {},
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    Opened {
        owner: String,
        currency: String,
        /// Personal data of `owner` (a token once stored).
        holder_name: Option<String>,
        email: Option<String>,
    },
    Deposited {
        amount: u64,
        currency: String,
    },
    Withdrawn {
        amount: u64,
    },
    Closed,
}

pub const ACCOUNT_OPENED: &str = "AccountOpened";
pub const DEPOSITED: &str = "Deposited";
pub const WITHDRAWN: &str = "Withdrawn";
pub const ACCOUNT_CLOSED: &str = "AccountClosed";

#[derive(Serialize, Deserialize)]
struct OpenedData {
    owner: String,
    currency: String,
    #[serde(default)]
    holder_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
}
#[derive(Serialize, Deserialize)]
struct DepositedData {
    amount: u64,
    currency: String,
}
#[derive(Serialize, Deserialize)]
struct WithdrawnData {
    amount: u64,
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Opened { .. } => ACCOUNT_OPENED,
            AccountEvent::Deposited { .. } => DEPOSITED,
            AccountEvent::Withdrawn { .. } => WITHDRAWN,
            AccountEvent::Closed => ACCOUNT_CLOSED,
        }
    }

    fn to_data(&self) -> Value {
        match self {
            AccountEvent::Opened {
                owner,
                currency,
                holder_name,
                email,
            } => {
                let mut data = json!({"owner": owner, "currency": currency});
                // Only when given: events without personal data keep their old shape.
                for (name, v) in [("holder_name", holder_name), ("email", email)] {
                    if let Some(v) = v {
                        data[name] = Value::from(v.as_str());
                    }
                }
                data
            }
            AccountEvent::Deposited { amount, currency } => {
                json!({"amount": amount, "currency": currency})
            }
            AccountEvent::Withdrawn { amount } => json!({ "amount": amount }),
            AccountEvent::Closed => json!({}),
        }
    }

    fn from_data(event_type: &str, data: &Value) -> Result<Self, String> {
        Self::decode(event_type, data)
    }

    fn from_json(event_type: &str, json: &str) -> Result<Self, String> {
        Self::decode(event_type, json)
    }
}

/// Where event data is decoded from: a parsed `Value` or, on bulk replay, JSON text.
trait Source {
    fn get<T: serde::de::DeserializeOwned>(self) -> Result<T, String>;
}

impl Source for &Value {
    fn get<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        T::deserialize(self).map_err(|e| e.to_string())
    }
}

impl Source for &str {
    fn get<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_str(self).map_err(|e| e.to_string())
    }
}

impl AccountEvent {
    fn decode(event_type: &str, src: impl Source) -> Result<Self, String> {
        Ok(match event_type {
            ACCOUNT_OPENED => {
                let d: OpenedData = src.get()?;
                AccountEvent::Opened {
                    owner: d.owner,
                    currency: d.currency,
                    holder_name: d.holder_name,
                    email: d.email,
                }
            }
            DEPOSITED => {
                let d: DepositedData = src.get()?;
                AccountEvent::Deposited {
                    amount: d.amount,
                    currency: d.currency,
                }
            }
            WITHDRAWN => {
                let d: WithdrawnData = src.get()?;
                AccountEvent::Withdrawn { amount: d.amount }
            }
            ACCOUNT_CLOSED => AccountEvent::Closed,
            other => return Err(format!("unknown account event type `{other}`")),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the account does not exist: open it first")]
    NotOpened,
    #[error("the account is already open")]
    AlreadyOpened,
    #[error("the account is closed")]
    Closed,
    #[error("insufficient funds: the balance is {balance}, the withdrawal {amount}")]
    InsufficientFunds { balance: u64, amount: u64 },
    #[error("the deposit would overflow the balance")]
    Overflow,
    #[error("the account is in {account}, the deposit in {deposit}")]
    CurrencyMismatch { account: String, deposit: String },
}

impl DomainError for AccountError {
    const CODES: &'static [&'static str] = &[
        "account_not_found",
        "account_already_open",
        "account_closed",
        "insufficient_funds",
        "balance_overflow",
        "currency_mismatch",
    ];

    fn code(&self) -> &'static str {
        match self {
            AccountError::NotOpened => "account_not_found",
            AccountError::AlreadyOpened => "account_already_open",
            AccountError::Closed => "account_closed",
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
            AccountError::Overflow => "balance_overflow",
            AccountError::CurrencyMismatch { .. } => "currency_mismatch",
        }
    }

    fn refusal(&self) -> Refusal {
        match self {
            AccountError::NotOpened => Refusal::NotFound,
            _ => Refusal::Rule,
        }
    }
}

fn valid_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

impl Aggregate for Account {
    const TYPE: &'static str = "accounts";
    const STATE_VERSION: u32 = 1;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type View = AccountView;

    fn schema() -> EventSchema {
        EventSchema::new()
            .event(ACCOUNT_OPENED, 1)
            .event(DEPOSITED, 2)
            .event(WITHDRAWN, 1)
            .event(ACCOUNT_CLOSED, 1)
            .personal(
                ACCOUNT_OPENED,
                SubjectOf::field("owner"),
                &["holder_name", "email"],
            )
            .upcaster(DEPOSITED, 1, |mut data| {
                let obj = data
                    .as_object_mut()
                    .ok_or("Deposited v1 data is not an object")?;
                obj.entry("currency")
                    .or_insert_with(|| Value::from(LEGACY_CURRENCY));
                Ok(data)
            })
    }

    fn validate(command: &AccountCommand) -> Result<(), String> {
        match command {
            AccountCommand::Open {
                owner,
                currency,
                holder_name,
                email,
            } => {
                if owner.trim().is_empty() || owner.chars().count() > 128 {
                    return Err("owner must have 1 to 128 characters".into());
                }
                if owner.chars().any(char::is_control) {
                    return Err("owner must not contain control characters".into());
                }
                if let Some(n) = holder_name {
                    if n.trim().is_empty() || n.chars().count() > 200 {
                        return Err("holder_name must have 1 to 200 characters".into());
                    }
                    if n.chars().any(char::is_control) {
                        return Err("holder_name must not contain control characters".into());
                    }
                }
                if let Some(e) = email {
                    let shaped = e.len() <= 254
                        && !e.chars().any(|c| c.is_control() || c.is_whitespace())
                        && e.split_once('@').is_some_and(|(local, domain)| {
                            !local.is_empty() && domain.contains('.') && !domain.contains('@')
                        });
                    if !shaped {
                        return Err(format!(
                            "email must be an address like dana@example.com, not {e:?}"
                        ));
                    }
                }
                if let Some(c) = currency {
                    if !valid_currency(c) {
                        return Err(format!(
                            "currency must be an ISO 4217 code like EUR, not {c:?}"
                        ));
                    }
                }
            }
            AccountCommand::Deposit { amount, currency } => {
                if *amount == 0 {
                    return Err("amount must be a positive integer (minor units)".into());
                }
                if let Some(c) = currency {
                    if !valid_currency(c) {
                        return Err(format!(
                            "currency must be an ISO 4217 code like EUR, not {c:?}"
                        ));
                    }
                }
            }
            AccountCommand::Withdraw { amount } => {
                if *amount == 0 {
                    return Err("amount must be a positive integer (minor units)".into());
                }
            }
            AccountCommand::Close {} => {}
        }
        Ok(())
    }

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match (self.status, command) {
            (
                Status::Unopened,
                AccountCommand::Open {
                    owner,
                    currency,
                    holder_name,
                    email,
                },
            ) => Ok(vec![AccountEvent::Opened {
                owner: owner.clone(),
                currency: currency.clone().unwrap_or_else(|| LEGACY_CURRENCY.into()),
                holder_name: holder_name.clone(),
                email: email.clone(),
            }]),
            (Status::Closed, _) => Err(AccountError::Closed),
            (Status::Open, AccountCommand::Open { .. }) => Err(AccountError::AlreadyOpened),
            (Status::Unopened, _) => Err(AccountError::NotOpened),
            (Status::Open, AccountCommand::Deposit { amount, currency }) => {
                if let Some(c) = currency {
                    if *c != self.currency {
                        return Err(AccountError::CurrencyMismatch {
                            account: self.currency.clone(),
                            deposit: c.clone(),
                        });
                    }
                }
                self.balance
                    .checked_add(*amount)
                    .ok_or(AccountError::Overflow)?;
                Ok(vec![AccountEvent::Deposited {
                    amount: *amount,
                    currency: self.currency.clone(),
                }])
            }
            (Status::Open, AccountCommand::Withdraw { amount }) => {
                if *amount > self.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: self.balance,
                        amount: *amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn { amount: *amount }])
            }
            (Status::Open, AccountCommand::Close {}) => Ok(vec![AccountEvent::Closed]),
        }
    }

    fn evolve(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened {
                owner,
                currency,
                holder_name,
                email,
            } => {
                self.status = Status::Open;
                self.owner = owner.clone();
                self.currency = currency.clone();
                self.holder_name = holder_name.clone();
                self.email = email.clone();
            }
            // decide() checked these; saturating keeps evolve total for any stored history.
            AccountEvent::Deposited { amount, .. } => {
                self.balance = self.balance.saturating_add(*amount)
            }
            AccountEvent::Withdrawn { amount } => {
                self.balance = self.balance.saturating_sub(*amount)
            }
            AccountEvent::Closed => self.status = Status::Closed,
        }
    }

    fn exists(&self) -> bool {
        self.status != Status::Unopened
    }

    fn view(&self, id: &str, version: u64) -> AccountView {
        view(id, self, version)
    }
}

/// What clients see of an account (`GET /accounts/{id}`, and the documents of
/// `accounts_by_owner`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountView {
    pub id: String,
    pub owner: String,
    /// In minor units.
    pub balance: u64,
    pub currency: String,
    pub status: Status,
    /// The version of the account this view reflects.
    pub version: u64,
    /// The owner's name and address when given at opening: `null`, and listed under
    /// `erased`, once the owner is forgotten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The personal fields erased (present only then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
}

/// What clients see of `account` at `version`.
pub fn view(id: &str, account: &Account, version: u64) -> AccountView {
    AccountView {
        id: id.to_owned(),
        owner: account.owner.clone(),
        balance: account.balance,
        currency: account.currency.clone(),
        status: account.status,
        version,
        holder_name: account.holder_name.clone(),
        email: account.email.clone(),
        erased: Vec::new(),
    }
}

/// The accounts domain: the aggregate (commands, state, history, state read model) and the
/// accounts-by-owner list read model (`GET /accounts?owner=...`).
pub fn domain() -> chronicle_kernel::Domain {
    chronicle_kernel::Domain::new()
        .aggregate::<Account>()
        .list(AccountsByOwner)
}
