//! Given/when/then tests of the accounts domain: every rule of `decide`, `validate` and
//! `evolve`, the command JSON, the view, the `Deposited` upcaster and the accounts-by-owner
//! projection.

use chronicle_accounts::{
    view, Account, AccountCommand, AccountError, AccountEvent, AccountsByOwner, Status,
    ACCOUNT_CLOSED, ACCOUNT_OPENED, DEPOSITED, LEGACY_CURRENCY, WITHDRAWN,
};
use chronicle_kernel::aggregate::fold;
use chronicle_kernel::{
    Aggregate, DomainError, DomainEvent, EventEnvelope, Projection, Refusal, UpcastError,
};
use serde_json::{json, Value};

/// The view as clients get it, in JSON.
fn json_view(account: &Account, id: &str, version: u64) -> Value {
    serde_json::to_value(account.view(id, version)).expect("a view serializes")
}

// ---------------------------------------------------------------------------------------------
// The given/when/then helper
// ---------------------------------------------------------------------------------------------

/// A history of events, folded into the state a command is decided against.
struct Given {
    state: Account,
}

fn given(history: &[AccountEvent]) -> Given {
    Given {
        state: fold(Account::default(), history),
    }
}

/// Why a command produced no events.
#[derive(Debug)]
enum Refused {
    /// `Account::validate` refused its shape (HTTP 400).
    Invalid(String),
    /// `Account::decide` refused it (HTTP 404/422).
    Domain(AccountError),
}

struct Then {
    state: Account,
    command: AccountCommand,
    outcome: Result<Vec<AccountEvent>, Refused>,
}

impl Given {
    /// Runs the command as the kernel does: validate first, then decide against the state.
    fn when(self, command: AccountCommand) -> Then {
        let outcome = match Account::validate(&command) {
            Err(m) => Err(Refused::Invalid(m)),
            Ok(()) => self.state.decide(&command).map_err(Refused::Domain),
        };
        Then {
            state: self.state,
            command,
            outcome,
        }
    }
}

impl Then {
    /// The command is accepted with exactly these events; returns the state after them.
    fn then(self, expected: &[AccountEvent]) -> Account {
        match self.outcome {
            Ok(events) => {
                assert_eq!(
                    events, expected,
                    "events of {:?} on {:?}",
                    self.command, self.state
                );
                fold(self.state, &events)
            }
            Err(r) => panic!(
                "{:?} on {:?} was refused ({r:?}), expected {expected:?}",
                self.command, self.state
            ),
        }
    }

    /// The domain refuses the command with this code; returns the error for closer looks.
    fn then_error(self, code: &str) -> AccountError {
        match self.outcome {
            Err(Refused::Domain(e)) => {
                assert_eq!(e.code(), code, "refusal of {:?}: {e}", self.command);
                e
            }
            other => panic!(
                "{:?} on {:?}: expected refusal `{code}`, got {other:?}",
                self.command, self.state
            ),
        }
    }

    /// `validate` refuses the command's shape; returns its message.
    fn then_invalid(self) -> String {
        match self.outcome {
            Err(Refused::Invalid(m)) => {
                assert!(!m.is_empty(), "an invalid command needs a message");
                m
            }
            other => panic!(
                "{:?}: expected validate to refuse it, got {other:?}",
                self.command
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shorthands
// ---------------------------------------------------------------------------------------------

fn opened(owner: &str, currency: &str) -> AccountEvent {
    AccountEvent::Opened {
        owner: owner.into(),
        currency: currency.into(),
        holder_name: None,
        email: None,
    }
}
fn deposited(amount: u64, currency: &str) -> AccountEvent {
    AccountEvent::Deposited {
        amount,
        currency: currency.into(),
    }
}
fn withdrawn(amount: u64) -> AccountEvent {
    AccountEvent::Withdrawn { amount }
}
fn open(owner: &str, currency: Option<&str>) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
        currency: currency.map(Into::into),
        holder_name: None,
        email: None,
    }
}
fn deposit(amount: u64) -> AccountCommand {
    AccountCommand::Deposit {
        amount,
        currency: None,
    }
}
fn deposit_in(amount: u64, currency: &str) -> AccountCommand {
    AccountCommand::Deposit {
        amount,
        currency: Some(currency.into()),
    }
}
fn withdraw(amount: u64) -> AccountCommand {
    AccountCommand::Withdraw { amount }
}

fn alice_eur() -> AccountEvent {
    opened("alice", "EUR")
}

/// A stored envelope of the `accounts/acc-1` stream.
fn envelope(version: u64, event_type: &str, schema_version: u32, data: Value) -> EventEnvelope {
    serde_json::from_value(json!({
        "event_id": format!("00000000-0000-4000-8000-{version:012}"),
        "aggregate_type": "accounts",
        "aggregate_id": "acc-1",
        "version": version,
        "event_type": event_type,
        "schema_version": schema_version,
        "data": data,
        "metadata": {"correlation_id": "corr-1"},
        "recorded_at": "2024-05-01T12:00:00.000000Z",
    }))
    .expect("a well-formed envelope")
}

/// An envelope in the current schema, as the command handler writes it.
fn envelope_of(version: u64, event: &AccountEvent) -> EventEnvelope {
    let schema = Account::schema();
    let event_type = event.event_type();
    envelope(
        version,
        event_type,
        schema.current_version(event_type).expect("a known type"),
        event.to_data(),
    )
}

// ---------------------------------------------------------------------------------------------
// Open
// ---------------------------------------------------------------------------------------------

#[test]
fn open_a_new_account_defaults_to_eur() {
    let state = given(&[])
        .when(open("alice", None))
        .then(&[opened("alice", "EUR")]);
    assert_eq!(LEGACY_CURRENCY, "EUR");
    assert_eq!(
        state,
        Account {
            status: Status::Open,
            owner: "alice".into(),
            currency: "EUR".into(),
            balance: 0,
            ..Account::default()
        }
    );
    assert!(state.exists());
}

#[test]
fn open_a_new_account_in_an_explicit_currency() {
    let state = given(&[])
        .when(open("bob", Some("USD")))
        .then(&[opened("bob", "USD")]);
    assert_eq!(state.currency, "USD");
    assert_eq!(state.owner, "bob");
    assert_eq!(state.status, Status::Open);
}

#[test]
fn a_second_open_is_refused() {
    let e = given(&[alice_eur()])
        .when(open("alice", None))
        .then_error("account_already_open");
    assert_eq!(e, AccountError::AlreadyOpened);
    assert_eq!(e.refusal(), Refusal::Rule);

    // Even in another currency or for another owner.
    given(&[alice_eur(), deposited(10, "EUR")])
        .when(open("bob", Some("USD")))
        .then_error("account_already_open");
}

// ---------------------------------------------------------------------------------------------
// Unopened accounts
// ---------------------------------------------------------------------------------------------

#[test]
fn commands_on_an_unopened_account_are_not_found() {
    for command in [
        deposit(10),
        deposit_in(10, "EUR"),
        withdraw(10),
        AccountCommand::Close {},
    ] {
        let e = given(&[]).when(command).then_error("account_not_found");
        assert_eq!(e, AccountError::NotOpened);
        assert_eq!(e.refusal(), Refusal::NotFound);
    }
    assert!(!Account::default().exists());
    assert_eq!(Account::default().status, Status::Unopened);
}

// ---------------------------------------------------------------------------------------------
// Closed accounts
// ---------------------------------------------------------------------------------------------

#[test]
fn close_an_open_account() {
    let state = given(&[alice_eur(), deposited(50, "EUR")])
        .when(AccountCommand::Close {})
        .then(&[AccountEvent::Closed]);
    assert_eq!(state.status, Status::Closed);
    assert_eq!(state.balance, 50, "closing keeps the balance as it was");
    assert!(state.exists(), "a closed account still exists");
}

#[test]
fn commands_on_a_closed_account_are_refused() {
    let history = [alice_eur(), deposited(100, "EUR"), AccountEvent::Closed];
    for command in [
        deposit(10),
        deposit_in(10, "EUR"),
        withdraw(10),
        AccountCommand::Close {},
    ] {
        let e = given(&history).when(command).then_error("account_closed");
        assert_eq!(e, AccountError::Closed);
        assert_eq!(e.refusal(), Refusal::Rule);
    }
}

#[test]
fn open_on_a_closed_account_is_refused() {
    // Any command on a closed account, Open included, is refused as `account_closed`.
    let history = [alice_eur(), AccountEvent::Closed];
    let outcome = given(&history).when(open("alice", None)).outcome;
    match outcome {
        Err(Refused::Domain(e)) => {
            assert_eq!(e.refusal(), Refusal::Rule);
            assert_eq!(e.code(), "account_closed");
        }
        other => panic!("re-opening a closed account must be refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Deposits and withdrawals
// ---------------------------------------------------------------------------------------------

#[test]
fn deposit_takes_the_account_currency() {
    let state = given(&[opened("carol", "GBP")])
        .when(deposit(250))
        .then(&[deposited(250, "GBP")]);
    assert_eq!(state.balance, 250);

    let state = given(&[opened("carol", "GBP"), deposited(250, "GBP")])
        .when(deposit_in(50, "GBP"))
        .then(&[deposited(50, "GBP")]);
    assert_eq!(state.balance, 300);
}

#[test]
fn deposit_in_another_currency_is_refused() {
    let e = given(&[opened("dave", "USD")])
        .when(deposit_in(10, "EUR"))
        .then_error("currency_mismatch");
    assert_eq!(
        e,
        AccountError::CurrencyMismatch {
            account: "USD".into(),
            deposit: "EUR".into(),
        }
    );
    assert_eq!(e.refusal(), Refusal::Rule);
}

#[test]
fn withdraw_within_the_balance() {
    let state = given(&[alice_eur(), deposited(100, "EUR")])
        .when(withdraw(30))
        .then(&[withdrawn(30)]);
    assert_eq!(state.balance, 70);
}

#[test]
fn withdrawing_exactly_the_balance_succeeds() {
    let state = given(&[alice_eur(), deposited(100, "EUR"), withdrawn(40)])
        .when(withdraw(60))
        .then(&[withdrawn(60)]);
    assert_eq!(state.balance, 0);
    assert_eq!(state.status, Status::Open);
}

#[test]
fn no_overdraft() {
    let e = given(&[alice_eur(), deposited(100, "EUR")])
        .when(withdraw(101))
        .then_error("insufficient_funds");
    assert_eq!(
        e,
        AccountError::InsufficientFunds {
            balance: 100,
            amount: 101,
        }
    );
    assert_eq!(e.refusal(), Refusal::Rule);

    let e = given(&[alice_eur()])
        .when(withdraw(1))
        .then_error("insufficient_funds");
    assert_eq!(
        e,
        AccountError::InsufficientFunds {
            balance: 0,
            amount: 1
        }
    );
}

#[test]
fn deposits_are_overflow_checked() {
    let near_max = [alice_eur(), deposited(u64::MAX - 10, "EUR")];
    let e = given(&near_max)
        .when(deposit(11))
        .then_error("balance_overflow");
    assert_eq!(e, AccountError::Overflow);
    assert_eq!(e.refusal(), Refusal::Rule);

    given(&near_max)
        .when(deposit(u64::MAX))
        .then_error("balance_overflow");

    // Up to exactly u64::MAX is fine.
    let state = given(&near_max)
        .when(deposit(10))
        .then(&[deposited(10, "EUR")]);
    assert_eq!(state.balance, u64::MAX);
}

// ---------------------------------------------------------------------------------------------
// validate
// ---------------------------------------------------------------------------------------------

#[test]
fn amounts_must_be_positive() {
    let m = given(&[alice_eur(), deposited(100, "EUR")])
        .when(deposit(0))
        .then_invalid();
    assert!(m.contains("amount"), "{m}");
    let m = given(&[alice_eur(), deposited(100, "EUR")])
        .when(withdraw(0))
        .then_invalid();
    assert!(m.contains("amount"), "{m}");
    // validate runs before the state is looked at.
    given(&[]).when(deposit_in(0, "EUR")).then_invalid();
    assert!(Account::validate(&deposit(1)).is_ok());
    assert!(Account::validate(&withdraw(1)).is_ok());
    assert!(Account::validate(&AccountCommand::Close {}).is_ok());
}

#[test]
fn owners_must_be_1_to_128_printable_characters() {
    for owner in ["", " ", "  \t "] {
        let m = given(&[]).when(open(owner, None)).then_invalid();
        assert!(m.contains("owner"), "{owner:?}: {m}");
    }
    let m = given(&[]).when(open(&"x".repeat(129), None)).then_invalid();
    assert!(m.contains("128"), "{m}");
    // Characters are counted, not bytes.
    given(&[]).when(open(&"é".repeat(129), None)).then_invalid();
    given(&[])
        .when(open(&"é".repeat(128), None))
        .then(&[opened(&"é".repeat(128), "EUR")]);
    given(&[])
        .when(open(&"x".repeat(128), None))
        .then(&[opened(&"x".repeat(128), "EUR")]);

    for owner in [
        "ali\nce",
        "alice\u{0}",
        "\u{7}bell",
        "tab\there",
        "del\u{7f}",
    ] {
        let m = given(&[]).when(open(owner, None)).then_invalid();
        assert!(m.contains("control"), "{owner:?}: {m}");
    }
    // Inner spaces and non-ASCII letters are fine.
    given(&[])
        .when(open("Zoë O'Brien-Smith", None))
        .then(&[opened("Zoë O'Brien-Smith", "EUR")]);
}

#[test]
fn currencies_must_be_three_uppercase_letters() {
    for bad in ["", "EU", "EURO", "eur", "Eur", "E1R", "€UR", " EU", "EU "] {
        let m = given(&[]).when(open("alice", Some(bad))).then_invalid();
        assert!(m.contains("currency"), "{bad:?}: {m}");
        let m = given(&[alice_eur()])
            .when(deposit_in(10, bad))
            .then_invalid();
        assert!(m.contains("currency"), "{bad:?}: {m}");
    }
    for good in ["EUR", "USD", "JPY", "XAU"] {
        assert!(
            Account::validate(&open("alice", Some(good))).is_ok(),
            "{good}"
        );
        assert!(Account::validate(&deposit_in(1, good)).is_ok(), "{good}");
    }
}

// ---------------------------------------------------------------------------------------------
// Command JSON
// ---------------------------------------------------------------------------------------------

fn parse(v: Value) -> Result<AccountCommand, serde_json::Error> {
    serde_json::from_value::<AccountCommand>(v)
}

#[test]
fn command_json_parses() {
    assert_eq!(
        parse(json!({"type": "Open", "owner": "alice"})).unwrap(),
        open("alice", None)
    );
    assert_eq!(
        parse(json!({"type": "Open", "owner": "alice", "currency": "USD"})).unwrap(),
        open("alice", Some("USD"))
    );
    assert_eq!(
        parse(json!({"type": "Deposit", "amount": 5})).unwrap(),
        deposit(5)
    );
    assert_eq!(
        parse(json!({"type": "Deposit", "amount": u64::MAX, "currency": "EUR"})).unwrap(),
        deposit_in(u64::MAX, "EUR")
    );
    assert_eq!(
        parse(json!({"type": "Withdraw", "amount": 7})).unwrap(),
        withdraw(7)
    );
    assert_eq!(
        parse(json!({"type": "Close"})).unwrap(),
        AccountCommand::Close {}
    );
}

#[test]
fn commands_round_trip_through_json() {
    for c in [
        open("alice", None),
        open("alice", Some("USD")),
        deposit(1),
        deposit_in(2, "EUR"),
        withdraw(3),
        AccountCommand::Close {},
    ] {
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(parse(v.clone()).unwrap(), c, "{v}");
    }
    // Absent currencies are not serialized (they'd change the idempotency fingerprint).
    assert_eq!(
        serde_json::to_value(deposit(1)).unwrap(),
        json!({"type": "Deposit", "amount": 1})
    );
}

#[test]
fn command_json_with_an_unknown_or_missing_type_is_refused() {
    for v in [
        json!({"type": "Transfer", "amount": 5}),
        json!({"type": "deposit", "amount": 5}),
        json!({"type": "", "amount": 5}),
        json!({"amount": 5}),
        json!({"type": 1}),
        json!("Close"),
        json!(null),
    ] {
        assert!(parse(v.clone()).is_err(), "{v} must not parse");
    }
}

#[test]
fn command_json_amounts_are_non_negative_integers() {
    for v in [
        json!({"type": "Deposit", "amount": -5}),
        json!({"type": "Deposit", "amount": 1.5}),
        json!({"type": "Deposit", "amount": 10.0}),
        json!({"type": "Deposit", "amount": "10"}),
        json!({"type": "Deposit", "amount": null}),
        json!({"type": "Deposit"}),
        json!({"type": "Withdraw", "amount": -1}),
        json!({"type": "Withdraw", "amount": 0.5}),
        json!({"type": "Withdraw", "amount": "7"}),
        json!({"type": "Withdraw", "amount": 18446744073709551616.0}),
    ] {
        assert!(parse(v.clone()).is_err(), "{v} must not parse");
    }
    // A number larger than u64::MAX is refused too.
    let too_big: Value =
        serde_json::from_str(r#"{"type": "Deposit", "amount": 18446744073709551616}"#).unwrap();
    assert!(parse(too_big).is_err());
}

#[test]
fn command_json_with_unknown_fields_is_refused() {
    for v in [
        json!({"type": "Open", "owner": "alice", "balance": 100}),
        json!({"type": "Deposit", "amount": 5, "note": "gift"}),
        json!({"type": "Withdraw", "amount": 5, "currency": "EUR"}),
    ] {
        let err = parse(v.clone()).expect_err(&format!("{v} must not parse"));
        assert!(err.to_string().contains("unknown field"), "{v}: {err}");
    }
}

#[test]
fn close_json_with_unknown_fields_is_refused() {
    for v in [
        json!({"type": "Close", "reason": "moving abroad"}),
        json!({"type": "Close", "amount": 5}),
    ] {
        assert!(parse(v.clone()).is_err(), "{v} must not parse");
    }
}

#[test]
fn command_json_with_wrong_field_types_is_refused() {
    for v in [
        json!({"type": "Open"}),
        json!({"type": "Open", "owner": 5}),
        json!({"type": "Open", "owner": "alice", "currency": 978}),
        json!({"type": "Deposit", "amount": 5, "currency": ["EUR"]}),
    ] {
        assert!(parse(v.clone()).is_err(), "{v} must not parse");
    }
}

// ---------------------------------------------------------------------------------------------
// Events and evolve
// ---------------------------------------------------------------------------------------------

#[test]
fn evolve_folds_a_full_history() {
    let history = [
        opened("erin", "CHF"),
        deposited(1_000, "CHF"),
        withdrawn(250),
        deposited(75, "CHF"),
        withdrawn(825),
        deposited(3, "CHF"),
        AccountEvent::Closed,
    ];
    let mut seen = Vec::new();
    let mut state = Account::default();
    for e in &history {
        state.evolve(e);
        seen.push((state.status, state.balance));
    }
    assert_eq!(
        seen,
        [
            (Status::Open, 0),
            (Status::Open, 1_000),
            (Status::Open, 750),
            (Status::Open, 825),
            (Status::Open, 0),
            (Status::Open, 3),
            (Status::Closed, 3),
        ]
    );
    assert_eq!(
        state,
        Account {
            status: Status::Closed,
            owner: "erin".into(),
            currency: "CHF".into(),
            balance: 3,
            ..Account::default()
        }
    );
    assert_eq!(fold(Account::default(), &history), state);
}

#[test]
fn events_round_trip_through_their_data() {
    let events = [
        opened("frank", "EUR"),
        deposited(42, "EUR"),
        withdrawn(7),
        AccountEvent::Closed,
    ];
    let types = [ACCOUNT_OPENED, DEPOSITED, WITHDRAWN, ACCOUNT_CLOSED];
    let data = [
        json!({"owner": "frank", "currency": "EUR"}),
        json!({"amount": 42, "currency": "EUR"}),
        json!({"amount": 7}),
        json!({}),
    ];
    for ((e, t), d) in events.iter().zip(types).zip(data) {
        assert_eq!(e.event_type(), t);
        assert_eq!(e.to_data(), d, "{t}");
        assert_eq!(AccountEvent::from_data(t, &d).unwrap(), *e, "{t}");
    }
    assert_eq!(
        (ACCOUNT_OPENED, DEPOSITED, WITHDRAWN, ACCOUNT_CLOSED),
        ("AccountOpened", "Deposited", "Withdrawn", "AccountClosed")
    );
}

#[test]
fn events_decode_the_same_from_json_text() {
    for e in [
        opened("frank", "EUR"),
        deposited(u64::MAX, "USD"),
        withdrawn(7),
        AccountEvent::Closed,
    ] {
        let text = e.to_data().to_string();
        assert_eq!(AccountEvent::from_json(e.event_type(), &text).unwrap(), e);
    }
    assert!(AccountEvent::from_json(DEPOSITED, r#"{"amount": 5}"#).is_err());
    assert!(AccountEvent::from_json(WITHDRAWN, "{not json").is_err());
    assert!(AccountEvent::from_json("Renamed", "{}").is_err());
}

#[test]
fn events_with_bad_data_do_not_decode() {
    let err = AccountEvent::from_data("Renamed", &json!({})).unwrap_err();
    assert!(err.contains("Renamed"), "{err}");
    // A v1 `Deposited` (no currency) must be upcast before it decodes.
    assert!(AccountEvent::from_data(DEPOSITED, &json!({"amount": 5})).is_err());
    assert!(AccountEvent::from_data(WITHDRAWN, &json!({"amount": -5})).is_err());
    assert!(AccountEvent::from_data(ACCOUNT_OPENED, &json!({"owner": "x"})).is_err());
}

// ---------------------------------------------------------------------------------------------
// view
// ---------------------------------------------------------------------------------------------

#[test]
fn view_has_the_documented_shape() {
    let state = fold(
        Account::default(),
        &[opened("gina", "USD"), deposited(500, "USD"), withdrawn(120)],
    );
    let v = json_view(&state, "acc-7", 3);
    assert_eq!(
        v,
        json!({
            "id": "acc-7",
            "owner": "gina",
            "balance": 380,
            "currency": "USD",
            "status": "open",
            "version": 3,
        })
    );
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["balance", "currency", "id", "owner", "status", "version"]
    );
    assert_eq!(serde_json::to_value(view("acc-7", &state, 3)).unwrap(), v);

    let closed = fold(state, &[AccountEvent::Closed]);
    assert_eq!(json_view(&closed, "acc-7", 4)["status"], json!("closed"));
    assert_eq!(json_view(&closed, "acc-7", 4)["version"], json!(4));
    assert_eq!(
        json_view(&Account::default(), "x", 0)["status"],
        json!("unopened")
    );
}

#[test]
fn balances_up_to_u64_max_are_exact_in_the_view() {
    let state = fold(
        Account::default(),
        &[alice_eur(), deposited(u64::MAX, "EUR")],
    );
    assert_eq!(
        json_view(&state, "a", 2)["balance"].as_u64(),
        Some(u64::MAX)
    );
}

// ---------------------------------------------------------------------------------------------
// Schema: the `Deposited` upcaster
// ---------------------------------------------------------------------------------------------

#[test]
fn schema_declares_current_versions() {
    let schema = Account::schema();
    assert_eq!(schema.current_version(ACCOUNT_OPENED), Some(1));
    assert_eq!(schema.current_version(DEPOSITED), Some(2));
    assert_eq!(schema.current_version(WITHDRAWN), Some(1));
    assert_eq!(schema.current_version(ACCOUNT_CLOSED), Some(1));
    assert_eq!(schema.current_version("Transferred"), None);
}

#[test]
fn deposited_v1_is_upcast_to_v2_in_eur() {
    let v1 = envelope(2, DEPOSITED, 1, json!({"amount": 125}));
    let up = Account::schema().upcast(v1.clone()).unwrap();
    assert_eq!(up.schema_version, 2);
    assert_eq!(up.data, json!({"amount": 125, "currency": "EUR"}));
    // Everything but the data and its schema version is left alone.
    assert_eq!(
        EventEnvelope {
            data: v1.data.clone(),
            schema_version: 1,
            ..up.clone()
        },
        v1
    );
    assert_eq!(
        AccountEvent::from_data(&up.event_type, &up.data).unwrap(),
        deposited(125, "EUR")
    );
}

#[test]
fn deposited_v2_is_unchanged() {
    let v2 = envelope(2, DEPOSITED, 2, json!({"amount": 9, "currency": "JPY"}));
    assert_eq!(Account::schema().upcast(v2.clone()).unwrap(), v2);
    // Current versions of the other types pass through as they are.
    for env in [
        envelope_of(1, &alice_eur()),
        envelope_of(3, &withdrawn(4)),
        envelope_of(4, &AccountEvent::Closed),
    ] {
        assert_eq!(Account::schema().upcast(env.clone()).unwrap(), env);
    }
}

#[test]
fn deposited_v1_that_somehow_has_a_currency_keeps_it() {
    let v1 = envelope(2, DEPOSITED, 1, json!({"amount": 1, "currency": "USD"}));
    let up = Account::schema().upcast(v1).unwrap();
    assert_eq!(up.data, json!({"amount": 1, "currency": "USD"}));
    assert_eq!(up.schema_version, 2);
}

#[test]
fn deposited_v1_that_is_not_an_object_fails_to_upcast() {
    let v1 = envelope(2, DEPOSITED, 1, json!([125]));
    match Account::schema().upcast(v1) {
        Err(UpcastError::Failed {
            event_type, from, ..
        }) => {
            assert_eq!(event_type, DEPOSITED);
            assert_eq!(from, 1);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[test]
fn schema_refuses_an_unknown_event_type() {
    let env = envelope(5, "AccountFrozen", 1, json!({}));
    assert_eq!(
        Account::schema().upcast(env),
        Err(UpcastError::UnknownEventType {
            event_type: "AccountFrozen".into(),
            stream: "accounts/acc-1".into(),
            version: 5,
        })
    );
}

#[test]
fn schema_refuses_a_newer_schema_version() {
    let env = envelope(
        3,
        DEPOSITED,
        3,
        json!({"amount": 1, "currency": "EUR", "fx": 1}),
    );
    assert_eq!(
        Account::schema().upcast(env),
        Err(UpcastError::NewerSchemaVersion {
            event_type: DEPOSITED.into(),
            found: 3,
            current: 2,
            stream: "accounts/acc-1".into(),
            version: 3,
        })
    );
    let env = envelope(4, WITHDRAWN, 2, json!({"amount": 1}));
    assert!(matches!(
        Account::schema().upcast(env),
        Err(UpcastError::NewerSchemaVersion {
            found: 2,
            current: 1,
            ..
        })
    ));
}

#[test]
fn schema_version_0_has_no_upcaster() {
    let env = envelope(
        1,
        ACCOUNT_OPENED,
        0,
        json!({"owner": "a", "currency": "EUR"}),
    );
    assert_eq!(
        Account::schema().upcast(env),
        Err(UpcastError::MissingUpcaster {
            event_type: ACCOUNT_OPENED.into(),
            from: 0,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// The accounts-by-owner projection
// ---------------------------------------------------------------------------------------------

#[test]
fn accounts_by_owner_describes_itself() {
    let p = AccountsByOwner;
    assert_eq!(p.name(), "accounts_by_owner");
    assert_eq!(AccountsByOwner::NAME, "accounts_by_owner");
    assert_eq!(p.aggregate_type(), "accounts");
    assert_eq!(p.aggregate_type(), Account::TYPE);
    assert_eq!(p.indexes(), &["owner"]);
}

/// Applies envelopes one by one, as the runner does (upcast first), keeping every document.
fn project(envelopes: &[EventEnvelope]) -> Vec<Value> {
    let schema = Account::schema();
    let mut doc: Option<Value> = None;
    let mut docs = Vec::new();
    for env in envelopes {
        let env = schema.upcast(env.clone()).expect("upcast");
        let next = AccountsByOwner
            .apply(doc.as_ref(), &env)
            .unwrap_or_else(|e| panic!("apply v{}: {e}", env.version));
        docs.push(next.clone());
        doc = Some(next);
    }
    docs
}

#[test]
fn accounts_by_owner_folds_a_stream_into_the_account_view() {
    let envelopes = [
        envelope_of(1, &opened("hana", "EUR")),
        // A v1 deposit from before multi-currency support.
        envelope(2, DEPOSITED, 1, json!({"amount": 300})),
        envelope_of(3, &withdrawn(120)),
        envelope_of(4, &deposited(20, "EUR")),
        envelope_of(5, &AccountEvent::Closed),
    ];
    let docs = project(&envelopes);
    assert_eq!(
        docs[0],
        json!({"id": "acc-1", "owner": "hana", "balance": 0, "currency": "EUR", "status": "open", "version": 1})
    );
    assert_eq!(docs[1]["balance"], json!(300));
    assert_eq!(docs[1]["version"], json!(2));
    assert_eq!(docs[2]["balance"], json!(180));
    assert_eq!(docs[3]["balance"], json!(200));
    assert_eq!(
        docs[4],
        json!({"id": "acc-1", "owner": "hana", "balance": 200, "currency": "EUR", "status": "closed", "version": 5})
    );
    // The document is the same view the aggregate serves.
    let state = fold(
        Account::default(),
        &[
            opened("hana", "EUR"),
            deposited(300, "EUR"),
            withdrawn(120),
            deposited(20, "EUR"),
            AccountEvent::Closed,
        ],
    );
    assert_eq!(docs[4], json_view(&state, "acc-1", 5));
}

#[test]
fn accounts_by_owner_refuses_what_it_cannot_read() {
    // An unknown event type.
    let err = AccountsByOwner
        .apply(None, &envelope(1, "AccountFrozen", 1, json!({})))
        .unwrap_err();
    assert!(err.contains("AccountFrozen"), "{err}");
    // A stored document that is not an account.
    let err = AccountsByOwner
        .apply(
            Some(&json!({"owner": 5})),
            &envelope_of(2, &deposited(1, "EUR")),
        )
        .unwrap_err();
    assert!(err.contains("stored document"), "{err}");
    // Data the current schema can't decode (a v1 deposit applied without upcasting).
    let doc = project(&[envelope_of(1, &alice_eur())]).remove(0);
    assert!(AccountsByOwner
        .apply(Some(&doc), &envelope(2, DEPOSITED, 1, json!({"amount": 1})))
        .is_err());
}

#[test]
fn every_refusal_code_is_listed_for_the_api_documentation() {
    let all = [
        AccountError::NotOpened,
        AccountError::AlreadyOpened,
        AccountError::Closed,
        AccountError::InsufficientFunds {
            balance: 1,
            amount: 2,
        },
        AccountError::Overflow,
        AccountError::CurrencyMismatch {
            account: "EUR".into(),
            deposit: "USD".into(),
        },
    ];
    for e in &all {
        assert!(
            AccountError::CODES.contains(&e.code()),
            "{} not listed",
            e.code()
        );
    }
    assert_eq!(
        AccountError::CODES.len(),
        all.len(),
        "a listed code no error has"
    );
}
