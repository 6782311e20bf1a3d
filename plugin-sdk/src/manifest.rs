//! Builders for [`Manifest`] and [`Subscription`].

use crate::{Manifest, Operation, Subscription};

impl Manifest {
    /// A manifest with no subscriptions and the host's default batch size.
    ///
    /// `name` identifies the plugin's cursor: a new version with the same name
    /// continues where the old one stopped. `version` is free-form.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Manifest;
    ///
    /// let manifest = Manifest::new("greeter", "1.0.0");
    /// assert_eq!(manifest.name, "greeter");
    /// assert!(manifest.subscriptions.is_empty());
    /// assert_eq!(manifest.batch_size, 0); // 0: the host decides
    /// ```
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            subscriptions: Vec::new(),
            batch_size: 0,
        }
    }

    /// Adds a table subscription.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Manifest, Operation, Subscription};
    ///
    /// let manifest = Manifest::new("greeter", "1.0.0")
    ///     .subscribe(Subscription::to("public", "user_accounts").on(&[Operation::Insert]))
    ///     .subscribe(Subscription::to("public", "orders"));
    /// assert_eq!(manifest.subscriptions.len(), 2);
    /// ```
    pub fn subscribe(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    /// Sets the preferred number of events per [`handle`](crate::Plugin::handle)
    /// call: 1 to 10 000, or 0 for the host's default.
    ///
    /// ```
    /// use pgevents_plugin_sdk::Manifest;
    ///
    /// let manifest = Manifest::new("greeter", "1.0.0").batch_size(100);
    /// assert_eq!(manifest.batch_size, 100);
    /// ```
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }
}

impl Subscription {
    /// Every operation on `schema.table`.
    ///
    /// Names are as in the catalog: case-sensitive and unquoted, so the table
    /// created as `"Order Items"` is `Order Items`, and `Orders` is `orders`.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Operation, Subscription};
    ///
    /// let subscription = Subscription::to("public", "orders");
    /// assert_eq!(subscription.operations, Operation::ALL);
    /// assert_eq!(subscription.changed_columns, None);
    /// ```
    pub fn to(schema: impl Into<String>, table: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            table: table.into(),
            operations: Operation::ALL.to_vec(),
            changed_columns: None,
        }
    }

    /// Delivers only these operations.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Operation, Subscription};
    ///
    /// let subscription = Subscription::to("public", "orders").on(&[Operation::Insert, Operation::Delete]);
    /// assert_eq!(subscription.operations, [Operation::Insert, Operation::Delete]);
    /// ```
    pub fn on(mut self, operations: &[Operation]) -> Self {
        self.operations = operations.to_vec();
        self
    }

    /// Delivers an update only if one of these columns changed.
    ///
    /// Inserts, deletes and truncates are not affected.
    ///
    /// ```
    /// use pgevents_plugin_sdk::{Operation, Subscription};
    ///
    /// let subscription = Subscription::to("public", "prices")
    ///     .on(&[Operation::Update])
    ///     .when_changed(&["price"]);
    /// assert_eq!(subscription.changed_columns, Some(vec!["price".to_string()]));
    /// ```
    pub fn when_changed<C: AsRef<str>>(mut self, columns: &[C]) -> Self {
        self.changed_columns = Some(columns.iter().map(|c| c.as_ref().to_owned()).collect());
        self
    }
}
