use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    #[on(Fail => Failed)]
    Running,
    #[terminal]
    Failed,
    /// Declared by the API but never set: needs #[declared_only].
    #[terminal]
    Unknown,
}

fn main() {}
